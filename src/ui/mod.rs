//! The operator page (`[ui]`): a page, a script and a style sheet built
//! into the binary, served under `[ui] path`. They hold no data: the page
//! reads everything through the registry API and the admin API with the
//! visitor's own credentials, so it shows nothing its visitor may not read
//! and does nothing its visitor may not do. Its answers carry a strict
//! `Content-Security-Policy`: only its own script and style, no inline
//! code, requests to this origin only, no framing.

use crate::config::ui::UiConfig;
use crate::http::{Body, Method, RequestHead, Response};

const INDEX_HTML: &[u8] = include_bytes!("assets/index.html");
const APP_JS: &[u8] = include_bytes!("assets/app.js");
const APP_CSS: &[u8] = include_bytes!("assets/app.css");

/// What the page may load and do. `connect-src 'self'`: it talks to this
/// server only; `form-action 'none'`: its forms are handled by its script.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Whether the page answers `path`: its own paths, and `/` (which leads to
/// it) when it is on.
pub fn owns(ui: &UiConfig, path: &str) -> bool {
    ui.enabled && (path == "/" || path.starts_with(&ui.path) || path == ui.path.trim_end_matches('/'))
}

/// The answer to a request `owns` said is the page's.
pub fn answer(ui: &UiConfig, head: &RequestHead) -> Response {
    if !matches!(head.method, Method::Get | Method::Head) {
        return Response::new(405)
            .header("Allow", "GET, HEAD")
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(Body::Bytes(b"the operator page only reads; use GET\n".to_vec()));
    }
    let rest = head.path.strip_prefix(&ui.path);
    let (content_type, bytes) = match rest {
        None => return Response::new(308).header("Location", ui.path.clone()),
        Some("") | Some("index.html") => ("text/html; charset=utf-8", INDEX_HTML.to_vec()),
        Some("app.js") => ("text/javascript; charset=utf-8", APP_JS.to_vec()),
        Some("app.css") => ("text/css; charset=utf-8", APP_CSS.to_vec()),
        // The registry's name, for the header; read as JSON, never as markup.
        Some("config.json") => (
            "application/json",
            serde_json::json!({ "name": ui.name }).to_string().into_bytes(),
        ),
        Some(_) => {
            return page_headers(Response::new(404))
                .header("Content-Type", "text/plain; charset=utf-8")
                .body(Body::Bytes(b"no such page\n".to_vec()));
        }
    };
    let body = if head.method == Method::Head {
        Body::Length(bytes.len() as u64)
    } else {
        Body::Bytes(bytes)
    };
    page_headers(Response::new(200))
        .header("Content-Type", content_type)
        .body(body)
}

/// The headers every answer of the page carries.
fn page_headers(response: Response) -> Response {
    response
        .header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .header("X-Content-Type-Options", "nosniff")
        .header("X-Frame-Options", "DENY")
        .header("Referrer-Policy", "no-referrer")
        .header("Cross-Origin-Opener-Policy", "same-origin")
        // Small, and changed by an upgrade: asked again each time.
        .header("Cache-Control", "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, path: &str) -> RequestHead {
        let text = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        crate::http::request::parse_head(text.as_bytes(), 16 * 1024)
            .expect("a valid head")
            .expect("a whole head")
            .1
    }

    fn on() -> UiConfig {
        UiConfig {
            enabled: true,
            ..UiConfig::default()
        }
    }

    #[test]
    fn the_page_its_files_and_its_name_are_served_with_a_strict_policy() {
        let ui = on();
        for (path, kind) in [
            ("/ui/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
            ("/ui/config.json", "application/json"),
        ] {
            let response = answer(&ui, &head("GET", path));
            assert_eq!(response.status, 200, "{path}");
            assert!(
                response.header_value("content-type").unwrap().starts_with(kind),
                "{path}"
            );
            assert_eq!(
                response.header_value("content-security-policy"),
                Some(CONTENT_SECURITY_POLICY)
            );
            assert_eq!(response.header_value("x-content-type-options"), Some("nosniff"));
        }
        let Body::Bytes(name) = answer(&ui, &head("GET", "/ui/config.json")).body else {
            panic!("a body");
        };
        assert_eq!(name, br#"{"name":"Angos"}"#);
        assert_eq!(answer(&ui, &head("GET", "/")).status, 308);
        assert_eq!(answer(&ui, &head("GET", "/ui")).status, 308);
        assert_eq!(answer(&ui, &head("GET", "/ui/nothing")).status, 404);
        assert_eq!(answer(&ui, &head("POST", "/ui/")).status, 405);
    }

    #[test]
    fn the_page_owns_its_paths_only_when_it_is_on() {
        let ui = on();
        assert!(owns(&ui, "/") && owns(&ui, "/ui/") && owns(&ui, "/ui") && owns(&ui, "/ui/app.js"));
        assert!(!owns(&ui, "/v2/") && !owns(&ui, "/uix") && !owns(&ui, "/metrics"));
        assert!(!owns(&UiConfig::default(), "/ui/"), "off by default");
    }

    #[test]
    fn the_page_loads_no_code_or_style_from_elsewhere_and_none_inline() {
        let html = std::str::from_utf8(INDEX_HTML).unwrap();
        assert!(!html.contains("<style") && !html.contains(" style="), "{html}");
        // No inline handler (` onclick=` and the like).
        let handler = html.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "an inline handler in the page");
        assert!(!html.contains("http://") && !html.contains("https://"));
        let js = std::str::from_utf8(APP_JS).unwrap();
        assert!(!js.contains("innerHTML") && !js.contains("eval(") && !js.contains("new Function"));
        let size = INDEX_HTML.len() + APP_JS.len() + APP_CSS.len();
        assert!(size < 100 * 1024, "the page is {size} bytes");
    }
}
