//! The controller's registry steps: checking a builder's reported digest, and publishing the
//! verified index, through the publishing engine (`crate::publish`).

use super::{Context, Error};
use crate::api::{MultiArchImage, MultiArchImageStatus};
use crate::plan::PublishOutcome;
use crate::validate::DesiredBuild;

/// Checks that the registry has the manifest a builder reported: `Ok(Ok(digest))` when it does,
/// `Ok(Err(why))` when it does not, `Err` when the registry cannot be asked now.
pub async fn verify_pushed(
    _ctx: &Context,
    _obj: &MultiArchImage,
    _desired: &DesiredBuild,
    digest: &str,
) -> Result<Result<String, String>, Error> {
    Err(Error::Registry(format!(
        "cannot verify {digest}: publishing engine not wired yet"
    )))
}

/// Verifies every platform's image and publishes the index to every tag.
pub async fn publish(
    _ctx: &Context,
    _obj: &MultiArchImage,
    _desired: &DesiredBuild,
    _status: &MultiArchImageStatus,
) -> Result<PublishOutcome, Error> {
    Err(Error::Registry("publishing engine not wired yet".into()))
}
