//! Scrubbing the object's known secret values (its push Secret and git Secret, read here) out of
//! failed builders' messages, which carry the tail of the builder's log into status and Events.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::{Context, Error};
use crate::api::MultiArchImage;
use crate::plan::{BuilderObservation, BuilderState};
use crate::secrets::{known_values, scrub};

/// The values of the Secrets `obj` names (a missing Secret has none).
async fn known_secret_values(ctx: &Context, obj: &MultiArchImage) -> Result<Vec<String>, Error> {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let names = [
        obj.spec.push_secret_ref.as_ref(),
        obj.spec.source.git.secret_ref.as_ref(),
    ];
    let mut values = Vec::new();
    for r in names.into_iter().flatten() {
        let secret = api
            .get_opt(&r.name)
            .await
            .map_err(|source| Error::GetSecret {
                name: r.name.clone(),
                source,
            })?;
        if let Some(secret) = secret {
            values.extend(known_values(&secret));
        }
    }
    Ok(values)
}

/// Replaces the known secret values in every failed builder's message. Reads the Secrets only
/// when there is a message to scrub.
pub async fn scrub_failures(
    ctx: &Context,
    obj: &MultiArchImage,
    observations: &mut [BuilderObservation],
) -> Result<(), Error> {
    let failed = |o: &BuilderObservation| matches!(&o.state, BuilderState::Failed { message, .. } if !message.is_empty());
    if !observations.iter().any(failed) {
        return Ok(());
    }
    let known = known_secret_values(ctx, obj).await?;
    for o in observations.iter_mut() {
        if let BuilderState::Failed { message, .. } = &mut o.state {
            *message = scrub(message, &known);
        }
    }
    Ok(())
}
