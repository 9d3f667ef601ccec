//! Where a repository is: a local folder or an object-storage URL.

use std::path::PathBuf;

/// The object stores Kiln reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Amazon S3 and S3-compatible stores (MinIO, Ceph, moto).
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage (`az://<container>/<prefix>`, the account from the
    /// environment).
    Azure,
}

/// A repository's location as given to `--model-repository`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Remote(RemoteUrl),
}

/// `<scheme>://<bucket>/<prefix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub scheme: Scheme,
    pub bucket: String,
    /// Without leading or trailing '/'; empty for the bucket's root.
    pub prefix: String,
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::S3 => "s3",
            Scheme::Gcs => "gs",
            Scheme::Azure => "az",
        };
        write!(f, "{scheme}://{}/{}", self.bucket, self.prefix)
    }
}

impl RemoteUrl {
    /// The URL of a key under the prefix, for messages.
    pub fn of(&self, key: &str) -> String {
        let base = self.to_string();
        let base = base.trim_end_matches('/');
        format!("{base}/{key}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("unsupported scheme '{0}://' in the model repository (use s3://, gs://, az://, file:// or a local folder)")]
    Scheme(String),
    #[error("'{0}' names no bucket (expected <scheme>://<bucket>/<prefix>)")]
    NoBucket(String),
    #[error("'{0}' is not a valid URL: {1}")]
    Invalid(String, String),
}

impl std::str::FromStr for Location {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((scheme, _)) = s.split_once("://") else {
            return Ok(Location::Local(PathBuf::from(s)));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let url = url::Url::parse(s)
                    .map_err(|e| LocationError::Invalid(s.into(), e.to_string()))?;
                let path = url
                    .to_file_path()
                    .map_err(|()| LocationError::Invalid(s.into(), "not a local path".into()))?;
                return Ok(Location::Local(path));
            }
            "s3" | "s3a" => Scheme::S3,
            "gs" => Scheme::Gcs,
            "az" | "azure" => Scheme::Azure,
            other => return Err(LocationError::Scheme(other.to_string())),
        };
        let url =
            url::Url::parse(s).map_err(|e| LocationError::Invalid(s.into(), e.to_string()))?;
        let bucket = url.host_str().unwrap_or_default().to_string();
        if bucket.is_empty() {
            return Err(LocationError::NoBucket(s.into()));
        }
        Ok(Location::Remote(RemoteUrl {
            scheme,
            bucket,
            prefix: url.path().trim_matches('/').to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_folders_and_urls() {
        let local: Location = "models".parse().unwrap();
        assert_eq!(local, Location::Local("models".into()));
        let file: Location = "file:///srv/models".parse().unwrap();
        assert_eq!(file, Location::Local("/srv/models".into()));
        let Location::Remote(s3) = "s3://bucket/team/models/".parse().unwrap() else {
            panic!("not remote")
        };
        assert_eq!(
            (s3.scheme, &s3.bucket[..], &s3.prefix[..]),
            (Scheme::S3, "bucket", "team/models")
        );
        assert_eq!(s3.to_string(), "s3://bucket/team/models");
        assert_eq!(
            s3.of("a/1/model.onnx"),
            "s3://bucket/team/models/a/1/model.onnx"
        );
        let Location::Remote(root) = "gs://b".parse().unwrap() else {
            panic!("not remote")
        };
        assert_eq!((root.scheme, &root.prefix[..]), (Scheme::Gcs, ""));
        assert_eq!(root.of("m/config.toml"), "gs://b/m/config.toml");
        assert_eq!(
            "hdfs://x/y".parse::<Location>(),
            Err(LocationError::Scheme("hdfs".into()))
        );
        assert!(matches!(
            "s3:///prefix".parse::<Location>(),
            Err(LocationError::NoBucket(_))
        ));
    }
}
