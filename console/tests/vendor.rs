//! The vendored chart library is exactly the files its VENDOR.md names: each file's SHA-256 is
//! the one recorded there, so an edit by hand (or a half-done update) fails the suite.

use std::path::Path;

use sha2::{Digest, Sha256};

#[test]
fn vendored_files_match_their_recorded_checksums() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/vendor/uplot");
    let record = std::fs::read_to_string(dir.join("VENDOR.md")).expect("VENDOR.md");
    let mut checked = 0;
    for line in record.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(|c| c.trim().trim_matches('`')).collect();
        let (file, sha) = (cells[1], cells[3]);
        let body = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let actual: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(actual, sha, "{file} differs from VENDOR.md");
        if !cells[2].is_empty() {
            let recorded: usize = cells[2].replace(',', "").parse().expect("a byte count");
            assert_eq!(body.len(), recorded, "{file}'s size");
        }
        checked += 1;
    }
    assert_eq!(checked, 3, "VENDOR.md lists the three vendored files");
}
