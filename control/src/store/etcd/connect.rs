//! Reaching etcd: what an `etcd[s]://` URL names, the TLS and login options
//! built from `--store-*`, the refusal of plaintext beyond loopback, and the
//! errors that say which of these failed and what to do.

use super::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use crate::store::{StoreError, StoreOptions};
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use std::time::Duration;

/// What an `etcd[s]://H:P[,H:P]` URL names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Endpoints {
    pub(crate) tls: bool,
    /// The hosts as written (an IPv6 address in brackets).
    pub(crate) hosts: Vec<String>,
    /// Their ports.
    pub(crate) ports: Vec<u16>,
    /// The client's endpoint list: `http[s]://H:P`.
    pub(crate) urls: Vec<String>,
}

/// `etcd[s]://H:P[,H:P]` taken apart (also what the agent keeps containers
/// from: [`crate::agent::node_guard`]).
pub(crate) fn endpoints(url: &str) -> Result<Endpoints, StoreError> {
    let (tls, rest) = match (url.strip_prefix("etcds://"), url.strip_prefix("etcd://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(StoreError::BadUrl(url.into())),
    };
    let rest = rest.trim_end_matches('/');
    let scheme = if tls { "https" } else { "http" };
    let (mut hosts, mut ports, mut urls) = (Vec::new(), Vec::new(), Vec::new());
    for hp in rest.split(',') {
        let hp = hp.trim();
        let parsed = hp
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .filter(|(h, p)| !h.is_empty() && *p != 0);
        let Some((host, port)) = parsed else {
            return Err(StoreError::BadUrl(url.into()));
        };
        hosts.push(host.to_string());
        ports.push(port);
        urls.push(format!("{scheme}://{hp}"));
    }
    Ok(Endpoints {
        tls,
        hosts,
        ports,
        urls,
    })
}

/// Whether `host` (as written in the URL) is this machine's loopback: traffic to
/// it never leaves the machine. A name other than `localhost` is not trusted to
/// be, whatever it resolves to today.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// Refuses plaintext etcd to any address beyond loopback unless the operator said
/// the network is trusted: the state it carries steers every node's traffic.
pub(super) fn check_plaintext(
    url: &str,
    eps: &Endpoints,
    insecure: bool,
) -> Result<(), StoreError> {
    if eps.tls || insecure || eps.hosts.iter().all(|h| is_loopback(h)) {
        return Ok(());
    }
    Err(StoreError::Insecure(url.into()))
}

/// The client's options: timeouts, and TLS and credentials from the settings,
/// which must fit the URL.
pub(super) fn connect_options(
    url: &str,
    eps: &Endpoints,
    opts: &StoreOptions,
) -> Result<ConnectOptions, StoreError> {
    let config = |reason: &str| StoreError::Config {
        store: url.into(),
        reason: reason.into(),
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if opts.cert.is_some() != opts.key.is_some() {
        return Err(config("--store-cert and --store-key go together"));
    }
    if eps.tls {
        let ca = opts.ca.as_deref().ok_or_else(|| {
            config("etcds:// needs --store-ca PATH, the CA that signed etcd's certificate")
        })?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem(
            url,
            "--store-ca",
            ca,
        )?));
        if let (Some(cert), Some(key)) = (&opts.cert, &opts.key) {
            tls = tls.identity(Identity::from_pem(
                read_pem(url, "--store-cert", cert)?,
                read_pem(url, "--store-key", key)?,
            ));
        }
        options = options.with_tls(tls);
    } else if opts.ca.is_some() || opts.cert.is_some() {
        return Err(config(
            "--store-ca, --store-cert and --store-key are for TLS: write the store as etcds://",
        ));
    }
    match (&opts.user, &opts.password) {
        (Some(user), Some(password)) => {
            // etcd's tokens lapse (and a restarted etcd forgets them): log in again then.
            options = options
                .with_user(user, password)
                .with_auto_token_refresh(true);
        }
        (Some(_), None) => return Err(config(
            "--store-user needs a password: --store-password-file PATH or VXMESH_STORE_PASSWORD",
        )),
        (None, Some(_)) => return Err(config("a store password was given without --store-user")),
        (None, None) => {}
    }
    Ok(options)
}

/// A PEM file's contents; an unreadable or non-PEM file is a clear error up
/// front rather than a TLS failure later.
fn read_pem(url: &str, flag: &str, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    let config = |reason: String| StoreError::Config {
        store: url.into(),
        reason,
    };
    let pem = std::fs::read(path)
        .map_err(|e| config(format!("cannot read {flag} {}: {e}", path.display())))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(config(format!(
            "{flag} {} is not PEM (-----BEGIN ...)",
            path.display()
        )));
    }
    Ok(pem)
}

/// An etcd client error as the store reports it: refused credentials are not an
/// outage, and a failed TLS handshake says which side to check.
pub(super) fn explain(store: &str, tls: bool, e: etcd_client::Error) -> StoreError {
    if let etcd_client::Error::GRpcStatus(s) = &e {
        let msg = s.message();
        let denied = matches!(
            s.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ) || [
            "authentication failed",
            "user name is empty",
            "permission denied",
        ]
        .iter()
        .any(|m| msg.contains(m));
        if denied {
            return StoreError::Denied {
                store: store.into(),
                reason: format!(
                    "{msg} (etcd checks users: check --store-user, its password and its \
                     role's read-write permission on /vxmesh/)"
                ),
            };
        }
    }
    StoreError::Unreachable {
        store: store.into(),
        reason: reason(tls, &e),
    }
}

/// Why a call failed, with its causes and, when TLS is what failed, which side
/// to check.
pub(super) fn reason(tls: bool, e: &etcd_client::Error) -> String {
    let reason = error_chain(e);
    let lower = reason.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    if !tls {
        reason
    } else if has(&["received fatal alert"]) {
        // an alert etcd sent: it refused this agent's certificate (or its
        // lack of one; which alert depends on when the handshake is cut)
        format!(
            "{reason} (TLS failed: etcd refused this agent's certificate: check \
             --store-cert and --store-key, signed by the CA of etcd's --trusted-ca-file)"
        )
    } else if has(&["certificate", "unknownissuer", "handshake", "alert"]) {
        format!(
            "{reason} (TLS failed: etcd's certificate must be signed by --store-ca and \
             name this host or address)"
        )
    } else if has(&["connection closed", "broken pipe", "connection reset"]) {
        // etcd closes a connection whose client certificate it does not trust
        // right after the handshake: the client sees only the connection go.
        format!(
            "{reason} (TLS failed: etcd closed the connection, as it does to a client \
             without a certificate that its --trusted-ca-file signed: check \
             --store-cert and --store-key)"
        )
    } else {
        reason
    }
}

/// The error and its sources on one line: a transport error's own text is
/// often just "transport error", the cause being further down.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let more = s.to_string();
        if !out.contains(&more) {
            out = format!("{out}: {more}");
        }
        src = s.source();
    }
    out
}
