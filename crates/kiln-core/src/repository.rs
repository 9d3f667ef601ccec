//! The model repository: where model folders are found. On disk it is
//! `<repo>/<model>/<version>/<file>` with numeric version folders and an optional
//! `<repo>/<model>/config.toml`; other sources (object storage, a test's memory)
//! implement the same [`Repository`] trait. A repository can also be one model's
//! folder (KServe's `/mnt/models`), served under a name given at start.

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

/// The repository cannot be listed (a folder that cannot be read, a bucket that
/// cannot be reached).
#[derive(Debug, thiserror::Error)]
#[error("cannot read model repository {location}: {reason}")]
pub struct RepositoryError {
    pub location: String,
    pub reason: String,
}

/// A version's files cannot be brought to local disk (a download that failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

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
    fn scan_model(&self, name: &str) -> Result<Option<ModelDir>, RepositoryError>;
    /// What a reload depends on: the config's content and every version's files,
    /// as last scanned.
    fn fingerprint(&self, dir: &ModelDir) -> ModelPrint;
    /// The text of the model's `config.toml`; `None` when it has none.
    fn read_config(&self, dir: &ModelDir) -> Result<Option<String>, std::io::Error>;
    /// The local folder holding version `v`'s files as `files` lists them: the
    /// version folder itself on disk; for a remote repository, a complete copy
    /// downloaded into its cache (never a partial one).
    fn fetch(&self, dir: &ModelDir, v: Version, files: &FilesPrint) -> Result<PathBuf, FetchError> {
        let _ = files;
        dir.version_path(v)
            .map(Path::to_path_buf)
            .ok_or_else(|| FetchError(format!("'{}' has no version {v}", dir.name)))
    }
    /// Whether a fetched model file exists (a version may lack the configured one).
    fn has_file(&self, path: &Path) -> bool {
        path.is_file()
    }
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
    /// The folder is this one model's (see [`Layout::SingleModel`]).
    single: Option<String>,
}

/// How a repository's folders map to models and versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `<model>/<version>/<files>`, `<model>/config.toml`.
    Models,
    /// One model's folder, served under this name: `<version>/<files>` and
    /// `config.toml`, or, with no numeric version folder, the files themselves
    /// as version 1 (what KServe's storage-initializer lays at `/mnt/models`).
    SingleModel(String),
}

impl FsRepository {
    pub fn new(root: PathBuf, marker: Option<String>) -> Self {
        Self::with_layout(root, marker, Layout::Models)
    }

    pub fn with_layout(root: PathBuf, marker: Option<String>, layout: Layout) -> Self {
        let single = match layout {
            Layout::Models => None,
            Layout::SingleModel(name) => Some(name),
        };
        FsRepository {
            root,
            marker,
            single,
        }
    }

    fn err(&self, source: std::io::Error) -> RepositoryError {
        RepositoryError {
            location: self.location(),
            reason: source.to_string(),
        }
    }
}

impl Repository for FsRepository {
    fn location(&self) -> String {
        self.root.display().to_string()
    }
    fn scan(&self) -> Result<Vec<ModelDir>, RepositoryError> {
        match &self.single {
            None => scan(&self.root, self.marker.as_deref()),
            Some(name) => {
                std::fs::read_dir(&self.root).map_err(|e| self.err(e))?;
                Ok(vec![single_model_dir(
                    name,
                    &self.root,
                    self.marker.as_deref(),
                )])
            }
        }
    }
    fn scan_model(&self, name: &str) -> Result<Option<ModelDir>, RepositoryError> {
        match &self.single {
            None => Ok(scan_model(&self.root, name, self.marker.as_deref())),
            Some(single) if single == name => Ok(self.scan()?.pop()),
            Some(_) => Ok(None),
        }
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

/// The model file of a fetched version folder: `configured` when it was chosen
/// in the config or is there; else the folder's one file with its extension, if
/// there is exactly one (KServe's storage-initializer lays a single model file
/// under its own name, `digits.onnx`). Otherwise `configured`, to be reported
/// missing.
pub fn model_file(
    folder: &Path,
    configured: &str,
    chosen: bool,
    exists: impl Fn(&Path) -> bool,
) -> PathBuf {
    let named = folder.join(configured);
    if chosen || exists(&named) {
        return named;
    }
    let Some(ext) = Path::new(configured).extension() else {
        return named;
    };
    let alike: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension() == Some(ext))
                .collect()
        })
        .unwrap_or_default();
    match <[PathBuf; 1]>::try_from(alike) {
        Ok([one]) => one,
        Err(_) => named,
    }
}

/// Whether `name` can be a model folder: a plain, visible name (no path).
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

/// A single model's folder: its numeric version folders, or, when it has none,
/// the folder itself as version 1.
fn single_model_dir(name: &str, root: &Path, marker: Option<&str>) -> ModelDir {
    let mut dir = model_dir(name.to_string(), root.to_path_buf(), marker);
    let has_version_folders = std::fs::read_dir(root).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.path().is_dir() && e.file_name().to_str().and_then(Version::parse).is_some())
    });
    if !has_version_folders && marker.is_none_or(|m| root.join(m).is_file()) {
        dir.versions = vec![(Version(1), root.to_path_buf())];
    }
    dir
}

/// Lists the models in a repository, sorted by name. Hidden folders and plain files
/// are ignored; folders that are not numbers are not versions. With a `marker`,
/// a version folder counts only once it holds a file of that name.
pub fn scan(repo: &Path, marker: Option<&str>) -> Result<Vec<ModelDir>, RepositoryError> {
    let err = |source: std::io::Error| RepositoryError {
        location: repo.display().to_string(),
        reason: source.to_string(),
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

/// What says a file's content changed beside its size.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stamp {
    /// On disk: the modification time, where the file system has one.
    Modified(Option<SystemTime>),
    /// In object storage: the object's ETag (or another content tag).
    Tag(String),
}

/// Names (relative to the version folder), sizes and stamps of every file of a
/// version: when it changes, the version's contents changed.
pub type FilesPrint = Vec<(PathBuf, u64, Stamp)>;

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
                out.push((rel, meta.len(), Stamp::Modified(meta.modified().ok())));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, 0, &mut out);
    out.sort();
    out
}

/// Everything about a model folder that a reload depends on: what identifies the
/// config file's content (its bytes on disk, its tag in object storage) and every
/// version folder's files.
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
    fn a_lone_model_file_under_another_name_is_the_model_unless_a_name_was_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let is_file = |p: &Path| p.is_file();
        std::fs::write(root.join("digits.onnx"), "x").unwrap();
        std::fs::write(root.join("notes.txt"), "x").unwrap();
        assert_eq!(
            model_file(root, "model.onnx", false, is_file),
            root.join("digits.onnx")
        );
        assert_eq!(
            model_file(root, "model.onnx", true, is_file),
            root.join("model.onnx")
        );
        std::fs::write(root.join("other.onnx"), "x").unwrap();
        assert_eq!(
            model_file(root, "model.onnx", false, is_file),
            root.join("model.onnx")
        );
        std::fs::write(root.join("model.onnx"), "x").unwrap();
        assert_eq!(
            model_file(root, "model.onnx", false, is_file),
            root.join("model.onnx")
        );
    }

    #[test]
    fn a_single_model_folder_is_version_1_unless_it_has_version_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("model.onnx"), "x").unwrap();
        std::fs::write(root.join("config.toml"), "").unwrap();
        let single = |marker: Option<&str>| {
            FsRepository::with_layout(
                root.to_path_buf(),
                marker.map(str::to_string),
                Layout::SingleModel("digits".into()),
            )
        };
        let models = single(None).scan().unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].name, "digits");
        assert_eq!(models[0].versions, [(Version(1), root.to_path_buf())]);
        assert!(single(None).scan_model("other").unwrap().is_none());
        // A marker guards the folder itself.
        assert!(single(Some("READY")).scan().unwrap()[0].versions.is_empty());
        // Numeric folders are the versions, as in a repository's model folder.
        std::fs::create_dir_all(root.join("3")).unwrap();
        let with_versions = single(None).scan_model("digits").unwrap().unwrap();
        assert_eq!(with_versions.version_numbers(), [Version(3)]);
        let missing = FsRepository::with_layout(
            root.join("nope"),
            None,
            Layout::SingleModel("digits".into()),
        );
        assert!(missing.scan().is_err());
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
