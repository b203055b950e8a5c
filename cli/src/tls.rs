//! The TLS options of `volley send tls://…` and `volley sink tls://…`, and the rustls
//! configurations made from them.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use volley::tls::{self, rustls};

/// `volley send tls://…` options.
#[derive(Debug, Clone, Default, Args)]
pub struct SendTlsArgs {
    /// tls://: verify the server against this CA file (PEM) instead of the system roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// tls://: present this client certificate (PEM; needs --key).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// tls://: the client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// tls://: the name to verify the server's certificate against (default: the URL's host).
    #[arg(long)]
    pub server_name: Option<String>,
}

/// `volley sink tls://…` options.
#[derive(Debug, Clone, Default, Args)]
pub struct SinkTlsArgs {
    /// tls://: this server's certificate chain (PEM).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// tls://: this server's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// tls://: require client certificates signed by this CA (PEM).
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
}

impl SendTlsArgs {
    /// The client configuration.
    ///
    /// # Errors
    /// A message naming the file that could not be used.
    pub fn config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let auth = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err("--cert and --key go together".into()),
        };
        tls::client_config(self.ca.as_deref(), auth).map_err(|e| e.to_string())
    }
}

impl SinkTlsArgs {
    /// The server configuration.
    ///
    /// # Errors
    /// Missing --cert/--key, or a file that could not be used.
    pub fn config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                tls::server_config(c, k, self.client_ca.as_deref()).map_err(|e| e.to_string())
            }
            _ => Err("tls:// needs --cert FILE --key FILE".into()),
        }
    }
}
