//! The Kubernetes client both binaries use: from `--kubeconfig` when given, else the usual
//! inference (`$KUBECONFIG`, `~/.kube/config`, the in-cluster service account).

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::ProcessError;

/// The client configuration, before a client is built from it.
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, ProcessError> {
    match kubeconfig {
        Some(path) => {
            let kc =
                Kubeconfig::read_from(path).map_err(|source| ProcessError::ReadKubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ProcessError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })
        }
        None => kube::Config::infer().await.map_err(ProcessError::NoConfig),
    }
}

/// A client for `kubeconfig`, or the inferred configuration without one.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ProcessError> {
    let config = config(kubeconfig).await?;
    kube::Client::try_from(config).map_err(ProcessError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_kubeconfig_is_named_in_the_error() {
        let Err(err) = client(Some(Path::new("/nonexistent/ferrolb/kubeconfig"))).await else {
            panic!("a client from a missing file");
        };
        assert!(matches!(err, ProcessError::ReadKubeconfig { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "cannot read kubeconfig /nonexistent/ferrolb/kubeconfig"
        );
    }

    #[tokio::test]
    async fn a_kubeconfig_file_gives_its_server() {
        let dir = std::env::temp_dir().join(format!("ferrolb-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:6443', insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
        )
        .unwrap();
        let cfg = config(Some(&path)).await.unwrap();
        assert_eq!(cfg.cluster_url.to_string(), "https://127.0.0.1:6443/");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
