//! Compiles the console's assets into the crate: every file under `assets/` is gzipped (best
//! compression) into `OUT_DIR`, and `assets.rs` lists each one's URL path, content type, ETag
//! and both bodies, so the binary serves them with nothing on disk and no compression at run
//! time.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo::rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut table = String::from(
        "/// Every asset: URL path, content type, ETag, body, gzipped body.\npub(crate) static ASSETS: &[Asset] = &[\n",
    );
    for (n, file) in files.iter().enumerate() {
        println!("cargo::rerun-if-changed={}", file.display());
        let relative = file.strip_prefix(&root).expect("under assets/");
        let url = relative
            .components()
            .map(|c| c.as_os_str().to_str().expect("asset names are UTF-8"))
            .collect::<Vec<_>>()
            .join("/");
        let body = fs::read(file).expect("read asset");
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&body).expect("gzip");
        let gzipped = encoder.finish().expect("gzip");
        let gz_path = out.join(format!("asset-{n}.gz"));
        fs::write(&gz_path, &gzipped).expect("write gzipped asset");
        let digest = Sha256::digest(&body);
        let etag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        writeln!(
            table,
            "    Asset {{ path: {url:?}, content_type: {:?}, etag: \"\\\"{etag}\\\"\", etag_gzip: \"\\\"{etag}-gz\\\"\", body: include_bytes!({:?}), gzipped: include_bytes!({:?}) }},",
            content_type(file),
            file.display().to_string(),
            gz_path.display().to_string(),
        )
        .expect("write to string");
    }
    table.push_str("];\n");
    fs::write(out.join("assets.rs"), table).expect("write assets.rs");
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read assets dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        // LICENSE, VERSION and the like: served as text, so the notices are readable.
        _ => "text/plain; charset=utf-8",
    }
}
