//! Builds the client of one object store from its URL and the flags. Credentials
//! come from the standard sources through object_store's own chains; Kiln adds
//! only the AWS shared credentials file, which object_store does not read.

use crate::location::{RemoteUrl, Scheme};
use crate::StorageOptions;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use std::sync::Arc;

pub(crate) fn build(
    url: &RemoteUrl,
    opts: &StorageOptions,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    // reqwest speaks TLS through the process's rustls provider: ring, as the
    // server's own TLS (installing it twice is harmless).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plain_http = opts
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    // The whole-request timeout is off: a large model takes as long as it takes.
    // Kiln bounds each wait instead (an answer, the next chunk), and the connect.
    let client = ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(opts.timeout)
        .with_allow_http(plain_http);
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: opts.retries,
        retry_timeout: opts.timeout * (opts.retries as u32 + 1),
    };
    let bucket_url = format!(
        "{}",
        RemoteUrl {
            prefix: String::new(),
            ..url.clone()
        }
    );
    let store: Arc<dyn ObjectStore> = match url.scheme {
        Scheme::S3 => {
            let mut b = AmazonS3Builder::from_env()
                .with_url(&bucket_url)
                .with_client_options(client)
                .with_retry(retry)
                .with_virtual_hosted_style_request(opts.virtual_hosted_style);
            if let Some(e) = &opts.endpoint {
                b = b.with_endpoint(e).with_allow_http(plain_http);
            }
            if let Some(r) = &opts.region {
                b = b.with_region(r);
            }
            if let Some(keys) = shared_credentials_file() {
                b = b.with_access_key_id(keys.0).with_secret_access_key(keys.1);
                if let Some(token) = keys.2 {
                    b = b.with_token(token);
                }
            }
            Arc::new(b.build()?)
        }
        Scheme::Gcs => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_url(&bucket_url)
                .with_client_options(client)
                .with_retry(retry);
            if let Some(e) = &opts.endpoint {
                b = b.with_config(GoogleConfigKey::BaseUrl, e);
            }
            Arc::new(b.build()?)
        }
        Scheme::Azure => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(&bucket_url)
                .with_client_options(client)
                .with_retry(retry);
            if let Some(e) = &opts.endpoint {
                b = b.with_endpoint(e.clone()).with_allow_http(plain_http);
            }
            Arc::new(b.build()?)
        }
    };
    Ok(store)
}

/// Keys from the AWS shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
/// `~/.aws/credentials`; profile `AWS_PROFILE`, else `default`), used only when
/// none of the sources object_store reads is configured: keys in the
/// environment, a web-identity token (EKS IRSA), container credentials (ECS, EKS
/// Pod Identity). Without any of them object_store asks the instance metadata.
fn shared_credentials_file() -> Option<(String, String, Option<String>)> {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|k| set(k))
    {
        return None;
    }
    let profile = std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty());
    let c = awscreds::Credentials::from_profile(profile.as_deref()).ok()?;
    match (c.access_key, c.secret_key) {
        (Some(id), Some(secret)) => {
            tracing::info!(
                profile = profile.as_deref().unwrap_or("default"),
                "object storage credentials from the shared credentials file"
            );
            Some((id, secret, c.session_token.or(c.security_token)))
        }
        _ => None,
    }
}
