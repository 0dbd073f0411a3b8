//! snow's published cacophony test vectors for every Noise protocol this crate uses, read at
//! test time from the snow crate's own source (never copied into this repository).

use std::path::{Path, PathBuf};
use std::process::Command;

use instaconnect_crypto::NOISE_PROTOCOL;

/// Every Noise protocol the crate uses.
const PROTOCOLS_WE_USE: &[&str] = &[NOISE_PROTOCOL];

fn snow_dir_from_metadata() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad cargo metadata: {e}"))?;
    let ours = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "instaconnect-crypto"))
        .ok_or("instaconnect-crypto not in metadata")?;
    let req = ours["dependencies"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["name"] == "snow"))
        .and_then(|d| d["req"].as_str())
        .ok_or("snow is not a dependency")?
        .to_string();
    // The resolved snow package (there is exactly one in the lock file).
    let snow: Vec<&serde_json::Value> = meta["packages"]
        .as_array()
        .map(|ps| ps.iter().filter(|p| p["name"] == "snow").collect())
        .unwrap_or_default();
    let pkg = match snow.as_slice() {
        [one] => *one,
        [] => return Err("snow package not found in metadata".into()),
        many => {
            return Err(format!(
                "{} snow packages; expected one matching {req}",
                many.len()
            ))
        }
    };
    let manifest_path = pkg["manifest_path"]
        .as_str()
        .ok_or("snow has no manifest_path")?;
    Path::new(manifest_path)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "snow manifest has no parent".into())
}

/// Fallback when `cargo metadata` cannot run offline: the snow version pinned in the
/// workspace's Cargo.lock, looked up in Cargo's registry source cache.
fn snow_dir_from_lock() -> Result<PathBuf, String> {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())
        .ok_or("no Cargo.lock above the crate")?;
    let text = std::fs::read_to_string(&lock).map_err(|e| e.to_string())?;
    let version = text
        .split("[[package]]")
        .find(|blk| blk.lines().any(|l| l.trim() == "name = \"snow\""))
        .and_then(|blk| {
            blk.lines()
                .find_map(|l| l.trim().strip_prefix("version = "))
        })
        .map(|v| v.trim_matches('"').to_string())
        .ok_or("snow not in Cargo.lock")?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let src = home.join("registry").join("src");
    std::fs::read_dir(&src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .filter_map(Result::ok)
        .map(|d| d.path().join(format!("snow-{version}")))
        .find(|p| p.is_dir())
        .ok_or_else(|| format!("snow-{version} not found under {}", src.display()))
}

fn load_vectors() -> serde_json::Value {
    let dir = snow_dir_from_metadata().or_else(|e1| {
        snow_dir_from_lock().map_err(|e2| format!("cargo metadata: {e1}; Cargo.lock: {e2}"))
    });
    let dir = dir.unwrap_or_else(|e| {
        panic!("cannot locate the snow crate's source to read its cacophony vectors: {e}")
    });
    let path = dir.join("tests").join("vectors").join("cacophony.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "snow's cacophony vectors are missing at {}: {e}",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn hex(s: &serde_json::Value) -> Vec<u8> {
    let s = s.as_str().unwrap_or_default();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn run_one_way_vector(v: &serde_json::Value) {
    let name = v["protocol_name"].as_str().unwrap();
    let (init_prologue, resp_prologue) = (hex(&v["init_prologue"]), hex(&v["resp_prologue"]));
    let (init_static, init_eph) = (hex(&v["init_static"]), hex(&v["init_ephemeral"]));
    let (init_rs, resp_static) = (hex(&v["init_remote_static"]), hex(&v["resp_static"]));

    let mut init = snow::Builder::new(name.parse().unwrap())
        .prologue(&init_prologue)
        .unwrap()
        .local_private_key(&init_static)
        .unwrap()
        .remote_public_key(&init_rs)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&init_eph)
        .build_initiator()
        .unwrap();
    let mut resp = snow::Builder::new(name.parse().unwrap())
        .prologue(&resp_prologue)
        .unwrap()
        .local_private_key(&resp_static)
        .unwrap()
        .build_responder()
        .unwrap();

    let messages = v["messages"].as_array().unwrap();
    assert!(!messages.is_empty());
    let mut buf = vec![0u8; 65535];
    let mut out = vec![0u8; 65535];

    // Message 0 is the whole one-way handshake.
    let (payload, expected) = (
        hex(&messages[0]["payload"]),
        hex(&messages[0]["ciphertext"]),
    );
    let n = init.write_message(&payload, &mut buf).unwrap();
    assert_eq!(&buf[..n], &expected[..], "{name}: handshake ciphertext");
    let m = resp.read_message(&buf[..n], &mut out).unwrap();
    assert_eq!(&out[..m], &payload[..], "{name}: handshake payload");
    assert_eq!(
        init.get_handshake_hash(),
        &hex(&v["handshake_hash"])[..],
        "{name}: handshake hash"
    );
    // The responder learned the initiator's static key: that is what authenticates a sender.
    let init_static_arr: [u8; 32] = init_static.as_slice().try_into().unwrap();
    let init_public = vodozemac::Curve25519PublicKey::from(
        &vodozemac::Curve25519SecretKey::from_slice(&init_static_arr),
    );
    assert_eq!(
        resp.get_remote_static(),
        Some(&init_public.to_bytes()[..]),
        "{name}: remote static"
    );

    // The rest are transport messages, all from initiator to responder (one-way pattern).
    let mut init = init.into_transport_mode().unwrap();
    let mut resp = resp.into_transport_mode().unwrap();
    for (i, msg) in messages.iter().enumerate().skip(1) {
        let (payload, expected) = (hex(&msg["payload"]), hex(&msg["ciphertext"]));
        let n = init.write_message(&payload, &mut buf).unwrap();
        assert_eq!(&buf[..n], &expected[..], "{name}: transport message {i}");
        let m = resp.read_message(&buf[..n], &mut out).unwrap();
        assert_eq!(&out[..m], &payload[..], "{name}: transport payload {i}");
    }
}

#[test]
fn cacophony_vectors_for_our_noise_protocols() {
    let vectors = load_vectors();
    let all = vectors["vectors"]
        .as_array()
        .expect("cacophony file has a `vectors` array");
    for proto in PROTOCOLS_WE_USE {
        let ours: Vec<&serde_json::Value> = all
            .iter()
            .filter(|v| v["protocol_name"].as_str() == Some(proto))
            .collect();
        assert!(!ours.is_empty(), "no cacophony vector for {proto}");
        for v in &ours {
            run_one_way_vector(v);
        }
    }
}

#[test]
fn a_wrong_vector_is_detected() {
    // Guard against a vacuous runner: corrupting one expected byte must fail.
    let vectors = load_vectors();
    let mut v = vectors["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["protocol_name"].as_str() == Some(NOISE_PROTOCOL))
        .unwrap()
        .clone();
    let ct = v["messages"][1]["ciphertext"].as_str().unwrap().to_string();
    let mut chars: Vec<char> = ct.chars().collect();
    chars[0] = if chars[0] == '0' { '1' } else { '0' };
    let flipped: String = chars.into_iter().collect();
    v["messages"][1]["ciphertext"] = serde_json::Value::String(flipped);
    let r = std::panic::catch_unwind(|| run_one_way_vector(&v));
    assert!(r.is_err());
}
