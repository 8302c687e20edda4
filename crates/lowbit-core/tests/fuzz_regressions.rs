//! Inputs the `lowbit_tensors` fuzz target (fuzz/) once broke the reader with, kept under
//! `tests/fuzz_regressions/lowbit_tensors/`: each must now be rejected with an error, no panic.

use lowbit_core::io;
use std::path::PathBuf;

#[test]
fn lowbit_tensors_regressions_are_errors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions/lowbit_tensors");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| io::from_bytes(&bytes));
        match result {
            Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("{} parsed", path.display()),
            Err(_) => panic!("{} panicked the reader", path.display()),
        }
        n += 1;
    }
    assert!(n > 0, "{} holds no inputs", dir.display());
}
