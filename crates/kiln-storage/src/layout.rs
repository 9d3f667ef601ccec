//! How a bucket's keys map to models and versions: the same layout as on disk
//! (`<model>/<version>/<files>`, `<model>/config.toml`), or one model's files
//! (KServe's layout). Pure: it sees a listing, not the store.

use kiln_core::config::CONFIG_FILE;
use kiln_core::model::Version;
use kiln_core::repository::{valid_model_name, Layout};
use std::collections::BTreeMap;

/// One object as listed, its key relative to the repository's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// The ETag, or the modification time where the store gives none.
    pub tag: String,
}

/// One file of a version: its path inside the version folder, and its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionFile {
    pub path: String,
    pub object: Listed,
}

/// One model as listed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelListing {
    /// The key prefix of the model's folder (relative to the repository's; empty
    /// for a single model).
    pub folder: String,
    pub config: Option<Listed>,
    /// Versions that count (with the ready marker, when one is asked for).
    pub versions: BTreeMap<Version, Vec<VersionFile>>,
}

/// Whether every part of a key is a plain name (no `.`, `..` or empty part): a
/// key that is not cannot become a path in the cache.
fn plain(parts: &[&str]) -> bool {
    parts
        .iter()
        .all(|p| !p.is_empty() && *p != "." && *p != ".." && !p.contains(['\\', '\0']))
}

/// Groups a listing into models, sorted by name. Keys that fit no model or
/// version are ignored, as stray files are on disk.
pub fn group(
    objects: &[Listed],
    layout: &Layout,
    marker: Option<&str>,
) -> BTreeMap<String, ModelListing> {
    let mut models: BTreeMap<String, ModelListing> = BTreeMap::new();
    // Single model: files outside version folders, version 1 if it has none.
    let mut loose: Vec<VersionFile> = Vec::new();
    for o in objects {
        // Folder placeholders ("a/b/") that some consoles create.
        if o.key.ends_with('/') {
            continue;
        }
        let parts: Vec<&str> = o.key.split('/').collect();
        if !plain(&parts) {
            continue;
        }
        let (name, folder, rest) = match layout {
            Layout::Models => match parts.split_first() {
                Some((model, rest)) if valid_model_name(model) && !rest.is_empty() => {
                    (model.to_string(), format!("{model}/"), rest)
                }
                _ => continue,
            },
            Layout::SingleModel(name) => (name.clone(), String::new(), &parts[..]),
        };
        let model = models.entry(name).or_insert_with(|| ModelListing {
            folder,
            ..Default::default()
        });
        match rest {
            [file] if *file == CONFIG_FILE => model.config = Some(o.clone()),
            [version, path @ ..] if !path.is_empty() && Version::parse(version).is_some() => {
                if let Some(v) = Version::parse(version) {
                    model.versions.entry(v).or_default().push(VersionFile {
                        path: path.join("/"),
                        object: o.clone(),
                    });
                }
            }
            _ if matches!(layout, Layout::SingleModel(_)) => loose.push(VersionFile {
                path: rest.join("/"),
                object: o.clone(),
            }),
            _ => {}
        }
    }
    if let Layout::SingleModel(name) = layout {
        let model = models.entry(name.clone()).or_default();
        if model.versions.is_empty() && !loose.is_empty() {
            model.versions.insert(Version(1), loose);
        }
    }
    if let Some(marker) = marker {
        for model in models.values_mut() {
            model
                .versions
                .retain(|_, files| files.iter().any(|f| f.path == marker));
        }
    }
    for model in models.values_mut() {
        for files in model.versions.values_mut() {
            files.sort_by(|a, b| a.path.cmp(&b.path));
        }
    }
    models
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(keys: &[&str]) -> Vec<Listed> {
        keys.iter()
            .map(|k| Listed {
                key: k.to_string(),
                size: k.len() as u64,
                tag: format!("\"{k}\""),
            })
            .collect()
    }

    fn versions(m: &ModelListing) -> Vec<(u64, Vec<&str>)> {
        m.versions
            .iter()
            .map(|(v, f)| (v.0, f.iter().map(|f| f.path.as_str()).collect()))
            .collect()
    }

    #[test]
    fn a_repository_groups_by_model_and_numeric_version() {
        let objects = listed(&[
            "a/config.toml",
            "a/1/model.onnx",
            "a/2/model.onnx",
            "a/2/sub/extra.bin",
            "a/notes/x",
            "a/1/",
            "b/10/model.onnx",
            "README.md",
            ".hidden/1/model.onnx",
            "c/../x/1/model.onnx",
            "c//1/model.onnx",
        ]);
        let models = group(&objects, &Layout::Models, None);
        assert_eq!(models.keys().collect::<Vec<_>>(), ["a", "b"]);
        let a = &models["a"];
        assert_eq!(a.folder, "a/");
        assert_eq!(a.config.as_ref().unwrap().key, "a/config.toml");
        assert_eq!(
            versions(a),
            [
                (1, vec!["model.onnx"]),
                (2, vec!["model.onnx", "sub/extra.bin"])
            ]
        );
        assert_eq!(versions(&models["b"]), [(10, vec!["model.onnx"])]);
    }

    #[test]
    fn a_version_counts_once_it_holds_the_marker() {
        let objects = listed(&["a/1/model.onnx", "a/1/READY", "a/2/model.onnx"]);
        let models = group(&objects, &Layout::Models, Some("READY"));
        assert_eq!(versions(&models["a"]), [(1, vec!["READY", "model.onnx"])]);
    }

    #[test]
    fn a_single_model_is_its_files_as_version_1_unless_it_has_version_folders() {
        let single = Layout::SingleModel("digits".into());
        let flat = group(&listed(&["model.onnx", "config.toml"]), &single, None);
        assert_eq!(flat.keys().collect::<Vec<_>>(), ["digits"]);
        assert_eq!(flat["digits"].folder, "");
        assert!(flat["digits"].config.is_some());
        assert_eq!(versions(&flat["digits"]), [(1, vec!["model.onnx"])]);
        let versioned = group(&listed(&["3/model.onnx", "notes.txt"]), &single, None);
        assert_eq!(versions(&versioned["digits"]), [(3, vec!["model.onnx"])]);
        // An empty prefix is still the model, with nothing to serve.
        let empty = group(&[], &single, None);
        assert!(empty["digits"].versions.is_empty());
        let unmarked = group(&listed(&["model.onnx"]), &single, Some("READY"));
        assert!(unmarked["digits"].versions.is_empty());
    }
}
