//! The API client: NPD's `--apiserver-override` URI turned into a
//! `kube::Config`, a client without kube's own retries, and how a failed
//! call is read ([`Failure`], from kube's `Status` helpers).

use std::time::Duration;

use kube::Client;

/// The longest `Retry-After` the exporter waits.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why an API call failed, as the exporter acts on it.
#[derive(Debug)]
pub enum Failure {
    /// Retry after this long (429 with a hint).
    After(Duration),
    /// The service account lacks a permission.
    Forbidden(String),
    NotFound(String),
    /// The server refuses the body (400, 409, 415, 422): sending it again
    /// cannot help.
    Refused(String),
    /// Anything else (5xx, a dropped connection): retry with backoff.
    Other(String),
}

impl Failure {
    pub fn of(e: &kube::Error) -> Self {
        let kube::Error::Api(s) = e else {
            return Self::Other(e.to_string());
        };
        if s.code == 429 {
            let secs = s
                .details
                .as_ref()
                .map_or(1, |d| d.retry_after_seconds.max(1));
            // Honoured, within reason: a server asking for hours is not
            // obeyed for longer than MAX_RETRY_AFTER.
            Self::After(Duration::from_secs(u64::from(secs)).min(MAX_RETRY_AFTER))
        } else if s.is_forbidden() {
            Self::Forbidden(s.message.clone())
        } else if s.is_not_found() {
            Self::NotFound(s.message.clone())
        } else if s.is_invalid()
            || s.is_already_exists()
            || s.is_conflict()
            || matches!(s.code, 400 | 413 | 415)
        {
            Self::Refused(format!("{} ({})", s.message, s.code))
        } else {
            Self::Other(e.to_string())
        }
    }
}

/// An API call bounded by [`CALL_TIMEOUT`](super::CALL_TIMEOUT).
pub async fn bounded<T>(
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(super::CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(
                format!("no answer within {:?}", super::CALL_TIMEOUT).into(),
            ))
        })
}

/// A client for the exporter: kube's own retry layer is off, since the
/// exporter retries with its own backoff and keeps only the latest state
/// (two layers of retries would multiply the requests of an outage).
pub fn client(mut config: kube::Config) -> anyhow::Result<Client> {
    use anyhow::Context;
    config.default_retry = false;
    let url = config.cluster_url.clone();
    Client::try_from(config).with_context(|| format!("cannot build a Kubernetes client for {url}"))
}

/// A `kube::Config` from NPD's `--apiserver-override` URI
/// (`https://host:port?inClusterConfig=false&auth=/path/kubeconfig&insecure=true`),
/// or the usual inference (in-cluster, then `KUBECONFIG`/`~/.kube/config`).
/// `Ok(None)`: no cluster configuration was found.
pub async fn client_config(override_: Option<&str>) -> anyhow::Result<Option<kube::Config>> {
    use anyhow::Context;
    let Some(uri) = override_.filter(|s| !s.is_empty()) else {
        return Ok(kube::Config::infer().await.ok());
    };
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut in_cluster = true;
    let mut auth = None;
    let mut insecure = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        let flag = || {
            v.parse::<bool>()
                .with_context(|| format!("--apiserver-override: {k}={v} is not true or false"))
        };
        match k {
            "inClusterConfig" => in_cluster = flag()?,
            "insecure" => insecure = flag()?,
            "auth" => auth = Some(v.to_owned()),
            "useServiceAccount" => {}
            other => anyhow::bail!(
                "--apiserver-override: unknown parameter {other:?} (inClusterConfig, auth, insecure, useServiceAccount)"
            ),
        }
    }
    let url: hyper::Uri = base
        .parse()
        .with_context(|| format!("--apiserver-override: {base:?} is not a URL"))?;
    let mut config = match (in_cluster, auth) {
        (false, Some(path)) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("--apiserver-override: cannot read kubeconfig {path}"))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--apiserver-override: kubeconfig {path}"))?
        }
        (true, _) => kube::Config::incluster().unwrap_or_else(|_| kube::Config::new(url.clone())),
        (false, None) => kube::Config::new(url.clone()),
    };
    if url.host().is_some() {
        config.cluster_url = url;
    }
    config.accept_invalid_certs = insecure;
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn override_uris_as_npd_writes_them() {
        let c = client_config(Some(
            "http://127.0.0.1:6443?inClusterConfig=false&insecure=true",
        ))
        .await
        .expect("parses")
        .expect("a config");
        assert_eq!(c.cluster_url.to_string(), "http://127.0.0.1:6443/");
        assert!(c.accept_invalid_certs);
        let e = client_config(Some("http://h?inClusterConfig=maybe"))
            .await
            .expect_err("bad flag");
        assert!(e.to_string().contains("inClusterConfig=maybe"), "{e}");
        let e = client_config(Some("http://h?nope=1"))
            .await
            .expect_err("unknown");
        assert!(e.to_string().contains("unknown parameter"), "{e}");
    }
}
