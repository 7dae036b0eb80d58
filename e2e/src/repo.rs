//! A git repository of a scenario's own: a bare repository the suite's git servers serve (over
//! `git://` and smart HTTP), and a work tree to commit and push from, so that a scenario can move
//! its branch without disturbing the others.

use std::path::{Path, PathBuf};

use crate::cmd::run;
use crate::env;

pub struct Repo {
    work: PathBuf,
    /// The repository over smart HTTP.
    pub url: String,
    /// The repository over `git://`.
    pub git_url: String,
}

impl Repo {
    /// A new, empty repository `name` (any earlier one of that name is removed).
    pub fn create(name: &str) -> Repo {
        let env = env();
        let bare = env.state.join("git").join(format!("{name}.git"));
        let work = env.state.join(format!("{name}-work"));
        let _ = std::fs::remove_dir_all(&bare);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("the work tree");
        run("git", &["init", "-q", "--bare", "-b", "main", &path(&bare)]);
        run("git", &["init", "-q", "-b", "main", &path(&work)]);
        run(
            "git",
            &["-C", &path(&work), "remote", "add", "origin", &path(&bare)],
        );
        let rename = |url: &str| url.replace("/sample.git", &format!("/{name}.git"));
        Repo {
            work,
            url: rename(&env.git_http_url),
            git_url: rename(&env.git_url),
        }
    }

    /// Writes `file` (its folders are made).
    pub fn write(&self, file: &str, text: &str) {
        let target = self.work.join(file);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).expect("a folder of the work tree");
        }
        std::fs::write(target, text).expect("writing a repository file");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.work.join(file)).expect("removing a repository file");
    }

    /// Commits everything and pushes `main`; returns the commit.
    pub fn commit(&self, message: &str) -> String {
        let w = path(&self.work);
        run("git", &["-C", &w, "add", "-A"]);
        run(
            "git",
            &[
                "-C",
                &w,
                "-c",
                "user.name=e2e",
                "-c",
                "user.email=e2e@example.com",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                message,
            ],
        );
        run("git", &["-C", &w, "push", "-q", "origin", "main"]);
        run("git", &["-C", &w, "rev-parse", "HEAD"])
            .trim()
            .to_string()
    }
}

pub fn path(p: &Path) -> String {
    p.display().to_string()
}
