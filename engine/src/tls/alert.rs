//! rustls errors → [`Error::Tls`]: the one place that names what went wrong in TLS terms.

use rustls::{AlertDescription as Alert, CertificateError};

use crate::error::{Error, TlsStatus};
use crate::SocketId;

/// The status of an alert, whichever side sent it.
fn alert_status(a: Alert) -> TlsStatus {
    match a {
        Alert::BadCertificate
        | Alert::UnsupportedCertificate
        | Alert::CertificateRevoked
        | Alert::CertificateExpired
        | Alert::CertificateUnknown
        | Alert::AccessDenied => TlsStatus::BadCertificate,
        Alert::UnknownCA => TlsStatus::UnknownCa,
        Alert::HandshakeFailure | Alert::ProtocolVersion | Alert::InsufficientSecurity => {
            TlsStatus::HandshakeFailure
        }
        Alert::CertificateRequired => TlsStatus::CertificateRequired,
        _ => TlsStatus::Protocol,
    }
}

/// Maps a rustls error on `socket`.
pub(crate) fn tls_error(socket: SocketId, e: &rustls::Error) -> Error {
    let (status, from_peer) = match e {
        rustls::Error::AlertReceived(a) => (alert_status(*a), true),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            (TlsStatus::UnknownCa, false)
        }
        rustls::Error::InvalidCertificate(_) => (TlsStatus::BadCertificate, false),
        rustls::Error::NoCertificatesPresented => (TlsStatus::CertificateRequired, false),
        rustls::Error::PeerIncompatible(_) => (TlsStatus::HandshakeFailure, false),
        _ => (TlsStatus::Protocol, false),
    };
    Error::Tls {
        socket: Some(socket),
        status,
        from_peer,
        detail: e.to_string(),
    }
}

/// A TLS error of this side that rustls did not produce (timeouts, truncation).
pub(crate) fn local(socket: SocketId, status: TlsStatus, detail: impl Into<String>) -> Error {
    Error::Tls {
        socket: Some(socket),
        status,
        from_peer: false,
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_went_wrong() {
        let id = SocketId::new(2, 0);
        let cases = [
            (
                rustls::Error::AlertReceived(Alert::CertificateRequired),
                TlsStatus::CertificateRequired,
                true,
            ),
            (
                rustls::Error::AlertReceived(Alert::UnknownCA),
                TlsStatus::UnknownCa,
                true,
            ),
            (
                rustls::Error::AlertReceived(Alert::BadCertificate),
                TlsStatus::BadCertificate,
                true,
            ),
            (
                rustls::Error::AlertReceived(Alert::HandshakeFailure),
                TlsStatus::HandshakeFailure,
                true,
            ),
            (
                rustls::Error::AlertReceived(Alert::DecodeError),
                TlsStatus::Protocol,
                true,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                TlsStatus::UnknownCa,
                false,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                TlsStatus::BadCertificate,
                false,
            ),
            (
                rustls::Error::NoCertificatesPresented,
                TlsStatus::CertificateRequired,
                false,
            ),
        ];
        for (e, status, peer) in cases {
            let got = tls_error(id, &e);
            assert_eq!(got.tls_status(), Some(status), "{e}");
            let Error::Tls { from_peer, .. } = &got else {
                panic!("not a TLS error: {got:?}");
            };
            assert_eq!(*from_peer, peer, "{e}");
            let msg = got.to_string();
            assert!(msg.starts_with("TLS on socket#2: "), "{msg}");
            assert!(msg.contains(status.describe()), "{msg}");
            assert_eq!(
                std::io::Error::from(got).kind(),
                std::io::ErrorKind::InvalidData
            );
        }
        let t = local(
            id,
            TlsStatus::Timeout,
            "the handshake did not finish within 1s",
        );
        assert_eq!(std::io::Error::from(t).kind(), std::io::ErrorKind::TimedOut);
    }
}
