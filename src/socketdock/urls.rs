//! Which SocketDock URLs the server will POST to: only `<endpoint>/socket/<id>/send` and
//! `/disconnect` for a configured endpoint and a socket id of SocketDock's form, so a forged
//! callback can never make the server send a queued message anywhere else.

/// The configured SocketDock base URLs (SOCKETDOCK_ENDPOINTS), without trailing slashes.
pub struct Endpoints(Vec<String>);

impl Endpoints {
    pub fn new(urls: &[String]) -> Self {
        Self(
            urls.iter()
                .map(|url| url.trim().trim_end_matches('/').to_owned())
                .filter(|url| !url.is_empty())
                .collect(),
        )
    }

    /// Whether `send` and `disconnect` are exactly the URLs of socket `id` on one configured
    /// endpoint.
    pub fn allows(&self, id: &str, send: &str, disconnect: &str) -> bool {
        is_socket_id(id)
            && self.0.iter().any(|endpoint| {
                send == format!("{endpoint}/socket/{id}/send")
                    && disconnect == format!("{endpoint}/socket/{id}/disconnect")
            })
    }
}

/// SocketDock's socket ids: 32 lower-case hex characters.
pub fn is_socket_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn only_a_configured_endpoints_urls_of_that_socket_are_allowed() {
        let endpoints = Endpoints::new(&["http://sd-a:8765/".into(), "http://sd-b:8765".into()]);
        let urls = |base: &str, id: &str| {
            (
                format!("{base}/socket/{id}/send"),
                format!("{base}/socket/{id}/disconnect"),
            )
        };
        let (send, disconnect) = urls("http://sd-b:8765", ID);
        assert!(endpoints.allows(ID, &send, &disconnect));
        for (base, id) in [
            ("http://evil:8765", ID),
            ("http://sd-a:8765.evil", ID),
            ("http://sd-a:8765/x", ID),
            ("http://sd-a:8765", "0123456789ABCDEF0123456789ABCDEF"),
            ("http://sd-a:8765", "../../x"),
        ] {
            let (send, disconnect) = urls(base, id);
            assert!(!endpoints.allows(id, &send, &disconnect), "{base} {id}");
        }
        let (send, _) = urls("http://sd-a:8765", ID);
        let (_, other) = urls("http://sd-b:8765", ID);
        assert!(!endpoints.allows(ID, &send, &other), "both on one endpoint");
        let (send, disconnect) = urls("http://sd-a:8765", ID);
        let other_id = "f".repeat(32);
        assert!(
            !endpoints.allows(&other_id, &send, &disconnect),
            "the socket's own URLs"
        );
    }
}
