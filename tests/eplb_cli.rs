//! `pipewright eplb`: fixture files as input, JSON output, and exit 2 for malformed input.

mod common;

use serde_json::Value;

fn eplb(args: &[&str]) -> std::process::Output {
    common::bin().arg("eplb").args(args).output().unwrap()
}

#[test]
fn fixture_in_placement_out() {
    let dir = common::fixture_dir("EPLB_FIXTURES", "eplb");
    let input = dir.join("small__flashlb_counterexample.json");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("layout.json");
    let run = eplb(&["--input", input.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in ["phy2log", "log2phy", "logcnt", "gpu_load", "imbalance", "lower_bound", "moved_slots"] {
        assert!(v.get(key).is_some(), "output lacks {key}");
    }
    assert!(String::from_utf8_lossy(&run.stderr).contains("worst layers"));
    // Re-running from that layout on the same loads moves nothing.
    let run = eplb(&["--input", input.to_str().unwrap(), "--previous", out.to_str().unwrap()]);
    assert!(run.status.success());
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["moved_slots"], 0);
}

#[test]
fn csv_and_npy_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("loads.csv");
    std::fs::write(&csv, "e0,e1,e2,e3\n10,20,30,40\n5,5,5,50\n").unwrap();
    let run =
        eplb(&["--input", csv.to_str().unwrap(), "--replicas", "8", "--groups", "1", "--nodes", "1", "--gpus", "4"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["phy2log"].as_array().unwrap().len(), 2);

    // A little-endian float64 .npy of shape (1, 4), written by hand.
    let mut npy: Vec<u8> = vec![0x93, b'N', b'U', b'M', b'P', b'Y', 1, 0];
    let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 4), }".to_string();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    for x in [1.0f64, 2.0, 3.0, 4.0] {
        npy.extend_from_slice(&x.to_le_bytes());
    }
    let path = tmp.path().join("loads.npy");
    std::fs::write(&path, npy).unwrap();
    let run =
        eplb(&["--input", path.to_str().unwrap(), "--replicas", "4", "--groups", "1", "--nodes", "1", "--gpus", "2"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn malformed_inputs_exit_2_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str], &str)] = &[
        (
            "ragged.csv",
            "1,2,3,4\n1,2,3\n",
            &["--replicas", "8", "--groups", "1", "--nodes", "1", "--gpus", "4"],
            "same number of experts",
        ),
        (
            "neg.csv",
            "1,-2,3,4\n",
            &["--replicas", "8", "--groups", "1", "--nodes", "1", "--gpus", "4"],
            "finite and ≥ 0",
        ),
        (
            "nan.csv",
            "1,nan,3,4\n",
            &["--replicas", "8", "--groups", "1", "--nodes", "1", "--gpus", "4"],
            "finite and ≥ 0",
        ),
        (
            "mult.csv",
            "1,2,3,4\n",
            &["--replicas", "6", "--groups", "1", "--nodes", "1", "--gpus", "4"],
            "multiple of gpus",
        ),
        (
            "few.csv",
            "1,2,3,4\n",
            &["--replicas", "2", "--groups", "1", "--nodes", "1", "--gpus", "2"],
            "≥ the number of experts",
        ),
        ("noparams.csv", "1,2,3,4\n", &[], "--replicas is needed"),
        (
            "bad.json",
            "{\"weight\": [[1, \"x\"]]}",
            &["--replicas", "2", "--groups", "1", "--nodes", "1", "--gpus", "1"],
            "not a number",
        ),
        ("bad.txt", "1,2", &[], "unknown input format"),
    ];
    for (name, content, args, words) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, content).unwrap();
        let mut all = vec!["--input", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let run = eplb(&all);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(words), "{name}: expected '{words}' in {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}
