//! A small HTTP/1.1 client over the daemon's Unix socket (or TCP), for the CLI, tests and the
//! load generator.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper_util::rt::TokioIo;

/// An open keep-alive connection to the daemon.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Why the daemon answered as it did: its error's `detail` as text (a string as it is,
    /// other JSON written out), or the body itself when it has none.
    pub fn detail(&self) -> String {
        match &self.json()["detail"] {
            serde_json::Value::String(d) => d.clone(),
            serde_json::Value::Null => String::from_utf8_lossy(&self.body).into_owned(),
            other => other.to_string(),
        }
    }
}

async fn start<S>(stream: S) -> anyhow::Result<Conn>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn { sender })
}

impl Conn {
    /// Connect to the daemon's Unix socket.
    pub async fn unix(socket: &Path) -> anyhow::Result<Conn> {
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to {}: {e}; is `idstitch serve` running there? (pass --socket)",
                socket.display()
            )
        })?;
        start(stream).await
    }

    /// Connect over TCP.
    pub async fn tcp(addr: &str) -> anyhow::Result<Conn> {
        start(tokio::net::TcpStream::connect(addr).await?).await
    }

    /// Send one request.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> anyhow::Result<Response> {
        self.sender.ready().await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .sender
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// GET a path.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        self.request("GET", path, &[], Vec::new()).await
    }

    /// POST JSON.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<Response> {
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            serde_json::to_vec(body)?,
        )
        .await
    }
}
