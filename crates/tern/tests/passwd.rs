//! `tern passwd` as a user runs it: batch mode, update, delete, errors, and
//! files shared with the real `mosquitto_passwd`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tern_broker::password::PasswordTable;

fn tern_passwd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("passwd")
        .args(args)
        .output()
        .expect("tern runs")
}

fn ok(args: &[&str]) {
    let out = tern_passwd(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fails(args: &[&str]) -> String {
    let out = tern_passwd(args);
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-passwd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("passwd")
}

fn table(path: &Path) -> PasswordTable {
    PasswordTable::load(path).unwrap()
}

#[test]
fn batch_mode_writes_a_file_that_verifies() {
    let file = temp_file("batch");
    let f = file.to_str().unwrap();
    ok(&["-c", "-b", f, "alice", "wonder"]);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$7$10000$"), "{text}");
    assert!(table(&file).check("alice", b"wonder"));

    ok(&["-b", "-I", "1000", f, "bob", "builder"]);
    ok(&["-b", "-I", "1000", f, "alice", "land"]);
    let t = table(&file);
    assert_eq!(t.len(), 2);
    assert!(t.check("alice", b"land") && !t.check("alice", b"wonder"));
    assert!(t.check("bob", b"builder"));

    ok(&["-D", f, "bob"]);
    let t = table(&file);
    assert_eq!(t.len(), 1);
    assert!(!t.check("bob", b"builder"));
    // No temporary files are left behind.
    assert_eq!(
        std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn errors_are_clear() {
    let file = temp_file("errors");
    let f = file.to_str().unwrap();
    assert!(fails(&["-b", f, "alice", "pw"]).contains("use -c"));
    ok(&["-c", "-b", "-I", "10", f, "alice", "pw"]);
    assert!(fails(&["-D", f, "nobody"]).contains("not found"));
    assert!(fails(&["-b", f, "a:b", "pw"]).contains("invalid username"));
    assert!(fails(&["-b", f, "alice"]).contains("-b needs the password"));
    assert!(fails(&[f, "alice", "pw"]).contains("needs -b"));
}

#[test]
fn mosquitto_files_are_read_and_kept() {
    let file = temp_file("mosquitto");
    let f = file.to_str().unwrap();
    let status = Command::new("mosquitto_passwd")
        .args(["-c", "-b", f, "mosq", "from-mosquitto"])
        .status()
        .expect("mosquitto_passwd is installed");
    assert!(status.success());
    ok(&["-b", "-I", "1000", f, "tern", "from-tern"]);
    let t = table(&file);
    assert!(t.check("mosq", b"from-mosquitto"));
    assert!(t.check("tern", b"from-tern"));
    // mosquitto_passwd in turn keeps Tern's line when it adds a user.
    let status = Command::new("mosquitto_passwd")
        .args(["-b", f, "other", "x"])
        .status()
        .unwrap();
    assert!(status.success());
    let t = table(&file);
    assert_eq!(t.len(), 3);
    assert!(t.check("tern", b"from-tern"));
}
