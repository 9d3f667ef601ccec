//! The model repository: where model folders are found. On disk it is
//! `<repo>/<model>/<version>/<file>` with numeric version folders and an optional
//! `<repo>/<model>/config.toml`; other sources (object storage, a test's memory)
//! implement the same [`Repository`] trait.

use crate::config::CONFIG_FILE;
use crate::model::Version;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

impl ModelDir {
    pub fn version_numbers(&self) -> Vec<Version> {
        self.versions.iter().map(|(v, _)| *v).collect()
    }

    pub fn version_path(&self, v: Version) -> Option<&Path> {
        self.versions
            .iter()
            .find(|(n, _)| *n == v)
            .map(|(_, p)| p.as_path())
    }
}

/// A source of model folders. The loader reads it from its own threads, never
/// the async runtime's, so implementations may block.
pub trait Repository: Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> String;
    /// Every model folder, sorted by name.
    fn scan(&self) -> Result<Vec<ModelDir>, RepositoryError>;
    /// One model's folder; `None` when there is none (or the name is not valid).
    fn scan_model(&self, name: &str) -> Option<ModelDir>;
    /// What a reload depends on: the config's bytes and every version's files.
    fn fingerprint(&self, dir: &ModelDir) -> ModelPrint;
    /// The text of the model's `config.toml`; `None` when it has none.
    fn read_config(&self, dir: &ModelDir) -> Result<Option<String>, std::io::Error>;
    /// Whether a model file exists (a version folder may lack the configured one).
    fn has_file(&self, path: &Path) -> bool;
    /// How a version folder counts, for messages (e.g. a marker file it must hold).
    fn version_rule(&self) -> String {
        String::new()
    }
}

/// A repository in a local folder (or a volume mounted there).
#[derive(Debug, Clone)]
pub struct FsRepository {
    root: PathBuf,
    /// A version folder counts only once it holds a file of this name.
    marker: Option<String>,
}

impl FsRepository {
    pub fn new(root: PathBuf, marker: Option<String>) -> Self {
        FsRepository { root, marker }
    }
}

impl Repository for FsRepository {
    fn location(&self) -> String {
        self.root.display().to_string()
    }
    fn scan(&self) -> Result<Vec<ModelDir>, RepositoryError> {
        scan(&self.root, self.marker.as_deref())
    }
    fn scan_model(&self, name: &str) -> Option<ModelDir> {
        scan_model(&self.root, name, self.marker.as_deref())
    }
    fn fingerprint(&self, dir: &ModelDir) -> ModelPrint {
        model_print(dir)
    }
    fn read_config(&self, dir: &ModelDir) -> Result<Option<String>, std::io::Error> {
        match std::fs::read_to_string(dir.path.join(CONFIG_FILE)) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn has_file(&self, path: &Path) -> bool {
        path.is_file()
    }
    fn version_rule(&self) -> String {
        self.marker
            .as_deref()
            .map(|m| format!(" holding the marker file '{m}'"))
            .unwrap_or_default()
    }
}

/// Whether `name` can be a model folder: a plain, visible name (no path).
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

/// Lists the models in a repository, sorted by name. Hidden folders and plain files
/// are ignored; folders that are not numbers are not versions. With a `marker`,
/// a version folder counts only once it holds a file of that name.
pub fn scan(repo: &Path, marker: Option<&str>) -> Result<Vec<ModelDir>, RepositoryError> {
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
        models.push(model_dir(name, entry.path(), marker));
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// One model of the repository, `None` when it has no folder.
pub fn scan_model(repo: &Path, name: &str, marker: Option<&str>) -> Option<ModelDir> {
    if !valid_model_name(name) {
        return None;
    }
    let path = repo.join(name);
    path.is_dir()
        .then(|| model_dir(name.to_string(), path, marker))
}

fn model_dir(name: String, path: PathBuf, marker: Option<&str>) -> ModelDir {
    let mut versions = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&path) {
        for v in rd.flatten() {
            let Some(version) = v.file_name().to_str().and_then(Version::parse) else {
                continue;
            };
            let vp = v.path();
            if vp.is_dir() && marker.is_none_or(|m| vp.join(m).is_file()) {
                versions.push((version, vp));
            }
        }
    }
    versions.sort();
    ModelDir {
        name,
        path,
        versions,
    }
}

/// Names, sizes and modification times of every file under a folder: when it
/// changes, the folder's contents changed.
pub type FilesPrint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Fingerprints a version folder (files under it, to a depth of 8).
pub fn files_print(dir: &Path) -> FilesPrint {
    fn walk(base: &Path, dir: &Path, depth: usize, out: &mut FilesPrint) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let p = e.path();
            if meta.is_dir() {
                if depth < 8 {
                    walk(base, &p, depth + 1, out);
                }
            } else {
                let rel = p.strip_prefix(base).unwrap_or(&p).to_path_buf();
                out.push((rel, meta.len(), meta.modified().ok()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, 0, &mut out);
    out.sort();
    out
}

/// Everything about a model folder that a reload depends on: the config file's
/// bytes and every version folder's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrint {
    config: Option<Vec<u8>>,
    versions: Vec<(Version, FilesPrint)>,
}

impl ModelPrint {
    pub fn new(config: Option<Vec<u8>>, versions: Vec<(Version, FilesPrint)>) -> Self {
        ModelPrint { config, versions }
    }

    /// The fingerprint of one version folder, as taken with the rest.
    pub fn files(&self, v: Version) -> Option<&FilesPrint> {
        self.versions.iter().find(|(n, _)| *n == v).map(|(_, f)| f)
    }
}

pub fn model_print(dir: &ModelDir) -> ModelPrint {
    ModelPrint {
        config: std::fs::read(dir.path.join(CONFIG_FILE)).ok(),
        versions: dir
            .versions
            .iter()
            .map(|(v, p)| (*v, files_print(p)))
            .collect(),
    }
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
        let models = scan(root, None).unwrap();
        let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "empty"]);
        let b: Vec<u64> = models[1].versions.iter().map(|v| v.0 .0).collect();
        assert_eq!(b, [1, 2, 10]);
        assert!(models[2].versions.is_empty());
        assert!(scan(&root.join("missing"), None).is_err());
        // With a marker, a version counts once the marker is there.
        std::fs::write(root.join("b/2/READY"), "").unwrap();
        let b = scan_model(root, "b", Some("READY")).unwrap();
        assert_eq!(b.version_numbers(), [Version(2)]);
        assert!(scan_model(root, "../b", None).is_none());
        assert!(scan_model(root, "nope", None).is_none());
    }

    #[test]
    fn prints_change_with_contents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("m/1/sub")).unwrap();
        std::fs::write(root.join("m/1/model.onnx"), "abc").unwrap();
        let m = scan_model(root, "m", None).unwrap();
        let first = model_print(&m);
        assert_eq!(first, model_print(&m));
        std::fs::write(root.join("m/1/sub/extra"), "x").unwrap();
        let second = model_print(&m);
        assert_ne!(first, second);
        std::fs::write(root.join("m/1/model.onnx"), "abcd").unwrap();
        assert_ne!(second, model_print(&m));
        let third = model_print(&m);
        std::fs::write(root.join("m/config.toml"), "max_batch_size = 2").unwrap();
        assert_ne!(third, model_print(&m));
        assert!(valid_model_name("resnet-50_v2"));
        for bad in ["", ".", "..", "a/b", ".hidden"] {
            assert!(!valid_model_name(bad), "{bad}");
        }
    }
}
