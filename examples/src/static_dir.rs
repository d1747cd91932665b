//! A folder of files served as pages: the `server` example's `--static
//! DIR`, so that a page of your own (the JavaScript client's README
//! example, say) is served beside `/nbio-ws.js` and the WebSocket endpoint,
//! same origin, no other web server.
//!
//! The files are read once, at startup ([`read_static_dir`]), and handed to
//! [`ServerBuilder::page`](nbio_ws::ServerBuilder::page): a request can
//! only ever get one of them, whatever its path, and an edit shows after a
//! restart. What is read is bounded: [`MAX_FILES`] files, [`MAX_BYTES`] in
//! all, [`MAX_DEPTH`] levels of folders.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("nbio-ws-static-doc-{}", std::process::id()));
//! std::fs::create_dir_all(dir.join("js")).unwrap();
//! std::fs::write(dir.join("index.html"), "<p>hi</p>").unwrap();
//! std::fs::write(dir.join("js/app.js"), "export {};").unwrap();
//! let files = nbio_ws_examples::static_dir::read_static_dir(&dir).unwrap();
//! let paths: Vec<_> = files.iter().map(|f| (f.path.as_str(), f.content_type)).collect();
//! assert_eq!(
//!     paths,
//!     [
//!         ("/", "text/html; charset=utf-8"),
//!         ("/index.html", "text/html; charset=utf-8"),
//!         ("/js/app.js", "text/javascript; charset=utf-8"),
//!     ]
//! );
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::path::Path;

use nbio_ws::ServerBuilder;

/// Files read from one folder, at the most.
pub const MAX_FILES: usize = 1000;
/// Bytes read from one folder, all files together, at the most (64 MiB).
pub const MAX_BYTES: u64 = 64 << 20;
/// Levels of folders below the top one that are read, at the most.
pub const MAX_DEPTH: usize = 8;

/// One file to serve.
#[derive(Debug, Clone)]
pub struct StaticFile {
    /// Its URL path: `/` and its path below the folder, `/` between
    /// components (`sub/page.html` → `/sub/page.html`). An `index.html`
    /// is also served at its folder's path (`/`, `/sub/`).
    pub path: String,
    /// Its `Content-Type`, from its extension ([`content_type`]).
    pub content_type: &'static str,
    /// Its bytes.
    pub body: Vec<u8>,
}

/// The `Content-Type` a file is served with, from its extension (case
/// insensitive): HTML, JavaScript, CSS, JSON, SVG, PNG, JPEG, GIF, WebP,
/// ICO, WebAssembly, plain text; anything else is
/// `application/octet-stream`.
///
/// ```
/// use nbio_ws_examples::static_dir::content_type;
/// assert_eq!(content_type("page.HTML"), "text/html; charset=utf-8");
/// assert_eq!(content_type("mod.mjs"), "text/javascript; charset=utf-8");
/// assert_eq!(content_type("data.bin"), "application/octet-stream");
/// ```
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Every regular file below `dir` (hidden ones, whose name starts with
/// `.`, and symbolic links left out), sorted by path; an error that names
/// the file, or the limit passed, when one cannot be read or there is
/// too much.
pub fn read_static_dir(dir: &Path) -> Result<Vec<StaticFile>, String> {
    let mut files = Vec::new();
    let mut total = 0u64;
    walk(dir, "", 0, &mut files, &mut total)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    files: &mut Vec<StaticFile>,
    total: &mut u64,
) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not UTF-8: no URL path for it
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let url = format!("{prefix}/{name}");
        if kind.is_dir() {
            if depth == MAX_DEPTH {
                return Err(format!(
                    "{}: folders more than {MAX_DEPTH} levels deep",
                    path.display()
                ));
            }
            walk(&path, &url, depth + 1, files, total)?;
        } else if kind.is_file() {
            if files.len() == MAX_FILES {
                return Err(format!("{}: more than {MAX_FILES} files", dir.display()));
            }
            let len = entry
                .metadata()
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            let too_much = || {
                format!(
                    "{}: more than {} MiB in all",
                    dir.display(),
                    MAX_BYTES >> 20
                )
            };
            if *total + len > MAX_BYTES {
                return Err(too_much());
            }
            let body = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            // It may have grown since: what counts is what was read.
            *total += body.len() as u64;
            if *total > MAX_BYTES {
                return Err(too_much());
            }
            if name == "index.html" {
                files.push(StaticFile {
                    path: format!("{prefix}/"),
                    content_type: content_type(&name),
                    body: body.clone(),
                });
            }
            files.push(StaticFile {
                content_type: content_type(&name),
                path: url,
                body,
            });
        }
    }
    Ok(())
}

/// `builder` with every file of `files` as a page (taking the place of a
/// page already set at the same path).
pub fn serve(mut builder: ServerBuilder, files: Vec<StaticFile>) -> ServerBuilder {
    for f in files {
        builder = builder.page(f.path, f.content_type, f.body);
    }
    builder
}
