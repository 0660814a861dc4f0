//! The CLI's side of the API: one HTTP/1.1 request per command over the unix
//! socket, its body and answer the types of [`crate::api_types`].

use crate::api_types::errors::ErrorBody;
use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;

/// Where the CLI finds the local agent when neither -H nor VXMESH_HOST says.
pub const DEFAULT_SOCKET: &str = "/run/vxmesh/vxmesh.sock";

pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// `unix:PATH` or a bare path.
    pub fn new(host: &str) -> anyhow::Result<Self> {
        let path = host
            .strip_prefix("unix://")
            .or_else(|| host.strip_prefix("unix:"))
            .unwrap_or(host);
        if path.is_empty() || host.contains("://") && !host.starts_with("unix://") {
            bail!("-H {host:?}: use unix:PATH (the agent's --api socket)");
        }
        Ok(Self {
            socket: PathBuf::from(path),
        })
    }

    /// A call whose answer is JSON, read as `T` (`serde_json::Value` reads any).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<impl Serialize>,
    ) -> anyhow::Result<T> {
        let body = self.call_bytes(method, path, body).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).context("the agent sent a response that is not JSON")?;
        serde_json::from_value(v).context(
            "the agent sent an answer this vxmesh does not understand (is it another version?)",
        )
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None::<()>).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: impl Serialize,
    ) -> anyhow::Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::DELETE, path, None::<()>).await
    }

    /// A GET whose response comes line by line for as long as the agent
    /// sends it (`vxmesh flows --follow`): `each` sees every line as it
    /// arrives, until the agent closes it or `each` fails.
    pub async fn stream_lines(
        &self,
        path: &str,
        mut each: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut resp = self.send(Method::GET, path, None::<()>).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            return Err(error_of(&body));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = resp.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                each(String::from_utf8_lossy(&line[..nl]).trim_end())?;
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<impl Serialize>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "cannot reach the vxmesh agent at unix:{}: is `vxmesh agent` running? (point -H or VXMESH_HOST at its --api socket)",
                self.socket.display()
            )
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(&b)?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "vxmesh")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))?;
        sender
            .send_request(req)
            .await
            .context("the agent closed the connection")
    }

    /// Like [`Self::call`], for a response that is not JSON (a pcap file).
    pub async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<impl Serialize>,
    ) -> anyhow::Result<Bytes> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(error_of(&body));
        }
        Ok(body)
    }
}

/// The agent's error body as an error (its message, or the body as text).
fn error_of(body: &[u8]) -> anyhow::Error {
    let msg = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    anyhow!("{msg}")
}
