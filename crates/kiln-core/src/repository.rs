//! The model repository on disk: `<repo>/<model>/<version>/<file>` with numeric
//! version folders and an optional `<repo>/<model>/config.toml`.

use crate::model::Version;
use std::path::{Path, PathBuf};

/// One model folder as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDir {
    pub name: String,
    pub path: PathBuf,
    /// Numeric version folders, ascending.
    pub versions: Vec<(Version, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read model repository {path}: {source}")]
pub struct RepositoryError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Lists the models in a repository, sorted by name. Hidden folders and plain files
/// are ignored; folders that are not numbers are not versions.
pub fn scan(repo: &Path) -> Result<Vec<ModelDir>, RepositoryError> {
    let err = |source| RepositoryError {
        path: repo.to_path_buf(),
        source,
    };
    let mut models = Vec::new();
    for entry in std::fs::read_dir(repo).map_err(err)? {
        let entry = entry.map_err(err)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let path = entry.path();
        let mut versions = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&path) {
            for v in rd.flatten() {
                let Some(version) = v.file_name().to_str().and_then(Version::parse) else {
                    continue;
                };
                if v.path().is_dir() {
                    versions.push((version, v.path()));
                }
            }
        }
        versions.sort();
        models.push(ModelDir {
            name,
            path,
            versions,
        });
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_models_and_numeric_versions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for p in ["b/1", "b/10", "b/2", "b/notes", "a/3", ".hidden/1", "empty"] {
            std::fs::create_dir_all(root.join(p)).unwrap();
        }
        std::fs::write(root.join("README"), "x").unwrap();
        let models = scan(root).unwrap();
        let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "empty"]);
        let b: Vec<u64> = models[1].versions.iter().map(|v| v.0 .0).collect();
        assert_eq!(b, [1, 2, 10]);
        assert!(models[2].versions.is_empty());
        assert!(scan(&root.join("missing")).is_err());
    }
}
