//! Attachments between two running nodes on 127.0.0.1: a photo and a multi-chunk file sent
//! directly arrive byte-identical, are listed in the history with their details, and are
//! saved with `attachments save`; bad input gets a clear error. A photo sent while the
//! recipient is offline arrives through a real relay byte-identical, with `send --wait`
//! showing its progress until the recipient has it.

use std::io::Read;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use instaconnect_e2e::relay::RelayProcess;
use instaconnect_e2e::{png, wait_until, Events, Home, Node, NODE_TIMEOUT};

const ASHA: &str = "+919812345678";
const RAVI: &str = "+919812340001";

/// The JSON output of a command run inside a node.
fn output(a: &instaconnect_e2e::Answer) -> serde_json::Value {
    assert_eq!(a.json["code"], 0, "{a:?}");
    serde_json::from_str(a.json["stdout"].as_str().expect("stdout")).expect("JSON output")
}

/// Asha and Ravi, each with a node running, linked as contacts; Asha's node dialled Ravi's.
struct Pair {
    asha: Home,
    ravi: Home,
    asha_node: Node,
    ravi_node: Node,
    ravi_events: Events,
    /// Where Ravi's node listens (a restarted node of Asha's dials it).
    ravi_addr: String,
}

fn linked() -> Pair {
    let asha = Home::with_account(ASHA, "Asha");
    let ravi = Home::with_account(RAVI, "Ravi");
    let mut ravi_node = ravi.start_node();
    let ravi_addr = ravi_node.wait_line("listening on ");
    let ravi_events = ravi_node.events();
    let asha_node = asha.start_node_with(&["--peer", &ravi_addr]);
    let asha_events = asha_node.events();
    asha.link(
        &asha_events,
        ASHA,
        &ravi,
        &ravi_events,
        RAVI,
        &ravi_node.peer_id,
        "Ravi",
    );
    Pair {
        asha,
        ravi,
        asha_node,
        ravi_node,
        ravi_events,
        ravi_addr,
    }
}

/// `attachments save ID --out NAME` in `home` through its node; the bytes written.
fn save(home: &Home, node: &Node, id: &str, name: &str) -> Vec<u8> {
    let out = home.file(name);
    let saved = node.command(&["attachments", "save", id, "--out", out.to_str().unwrap()]);
    assert_eq!(saved.json["code"], 0, "{saved:?}");
    std::fs::read(&out).unwrap()
}

#[test]
fn a_photo_and_a_file_sent_directly_arrive_byte_identical_and_can_be_saved() {
    let Pair {
        asha,
        ravi,
        asha_node,
        ravi_node,
        ravi_events,
        ..
    } = linked();

    let photo = png(640, 480);
    std::fs::write(asha.file("beach.png"), &photo).unwrap();
    // 3 MB that do not compress: 62 chunks.
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(asha.file("notes.bin"), &data).unwrap();

    let beach = asha.file("beach.png");
    let sent = output(&asha_node.command(&[
        "send",
        "--json",
        "Ravi",
        "--photo",
        beach.to_str().unwrap(),
        "the",
        "beach",
    ]));
    assert_eq!(sent["attachment"]["kind"], "photo");
    assert_eq!(sent["attachment"]["width"], 640);
    let photo_id = sent["id"].as_str().unwrap().to_string();
    let notes = asha.file("notes.bin");
    let sent =
        output(&asha_node.command(&["send", "--json", "Ravi", "--file", notes.to_str().unwrap()]));
    let file_id = sent["id"].as_str().unwrap().to_string();

    let mut done = std::collections::BTreeSet::new();
    while done.len() < 2 {
        let d = ravi_events.wait("attachment_received", |_| true);
        done.insert(d["id"].as_str().unwrap().to_string());
    }
    assert_eq!(done, [photo_id.clone(), file_id.clone()].into());

    let history = output(&ravi_node.command(&["history", "--json", "Asha"]));
    let got: Vec<(String, String, bool)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["text"].as_str().unwrap().to_string(),
                m["attachment"]["name"].as_str().unwrap_or("").to_string(),
                m["attachment"]["complete"] == true,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("the beach".to_string(), "beach.png".to_string(), true),
            (String::new(), "notes.bin".to_string(), true)
        ]
    );
    let plain = ravi_node.command(&["history", "Asha"]);
    assert!(
        plain.json["stdout"]
            .as_str()
            .unwrap()
            .contains("[photo beach.png, "),
        "{plain:?}"
    );

    assert!(
        save(&ravi, &ravi_node, &photo_id, "saved.png") == photo,
        "the photo is byte-identical"
    );
    assert!(
        save(&ravi, &ravi_node, &file_id, "saved.bin") == data,
        "the file is byte-identical"
    );
    let out2 = ravi.file("saved.bin");

    // Saving again over the file is refused; nothing is overwritten.
    let again = ravi_node.command(&[
        "attachments",
        "save",
        &file_id,
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert_ne!(again.json["code"], 0);
    assert!(
        again.json["stderr"]
            .as_str()
            .unwrap()
            .contains("exists already"),
        "{again:?}"
    );
    assert_eq!(std::fs::read(&out2).unwrap(), data);

    // Asha's side: both delivered, and read since Ravi opened the conversation.
    let mine = output(&asha_node.command(&["history", "--json", "Ravi"]));
    for m in mine.as_array().unwrap() {
        assert!(m["state"] == "delivered" || m["state"] == "read", "{m}");
    }
}

/// A WAV file of `seconds` of silence: 8 kHz, 8-bit mono (8000 bytes a second).
fn wav(seconds: u32) -> Vec<u8> {
    let data = 8_000 * seconds;
    let mut f = b"RIFF".to_vec();
    f.extend_from_slice(&(36 + data).to_le_bytes());
    f.extend_from_slice(b"WAVEfmt ");
    f.extend_from_slice(&16u32.to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // PCM
    f.extend_from_slice(&1u16.to_le_bytes()); // mono
    f.extend_from_slice(&8_000u32.to_le_bytes()); // sample rate
    f.extend_from_slice(&8_000u32.to_le_bytes()); // byte rate
    f.extend_from_slice(&1u16.to_le_bytes()); // block align
    f.extend_from_slice(&8u16.to_le_bytes()); // bits
    f.extend_from_slice(b"data");
    f.extend_from_slice(&data.to_le_bytes());
    f.resize(f.len() + data as usize, 0x80);
    f
}

/// An MP4 file whose movie header says `ms` milliseconds (a 1 ms timescale), `moov` after
/// `mdat`.
fn mp4(ms: u32) -> Vec<u8> {
    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }
    let mut mvhd = vec![0u8; 12]; // version 0, flags, creation and modification times
    mvhd.extend_from_slice(&1_000u32.to_be_bytes());
    mvhd.extend_from_slice(&ms.to_be_bytes());
    mvhd.resize(100, 0);
    let mut f = mp4_box(b"ftyp", b"isom\0\0\x02\0isommp41");
    f.extend(mp4_box(b"mdat", &[0x42; 5_000]));
    f.extend(mp4_box(b"moov", &mp4_box(b"mvhd", &mvhd)));
    f
}

#[test]
fn a_voice_note_and_a_video_arrive_with_their_durations() {
    let Pair {
        asha,
        ravi: _ravi,
        asha_node,
        ravi_node,
        ravi_events,
        ..
    } = linked();
    // No extension that names the type: it is sniffed from the content.
    let voice = asha.file("hello.rec");
    std::fs::write(&voice, wav(2)).unwrap();
    let clip = asha.file("clip.mp4");
    std::fs::write(&clip, mp4(42_000)).unwrap();
    let sent =
        output(&asha_node.command(&["send", "--json", "Ravi", "--voice", voice.to_str().unwrap()]));
    assert_eq!(sent["attachment"]["duration_ms"], 2_000, "{sent}");
    assert_eq!(sent["attachment"]["mime"], "audio/wav", "{sent}");
    let voice_id = sent["id"].as_str().unwrap().to_string();
    let sent =
        output(&asha_node.command(&["send", "--json", "Ravi", "--video", clip.to_str().unwrap()]));
    let clip_id = sent["id"].as_str().unwrap().to_string();

    let mut done = std::collections::BTreeSet::new();
    while done.len() < 2 {
        let d = ravi_events.wait("attachment_received", |_| true);
        done.insert(d["id"].as_str().unwrap().to_string());
    }
    assert_eq!(done, [voice_id, clip_id].into());
    let history = output(&ravi_node.command(&["history", "--json", "Asha"]));
    let got: Vec<(String, String, u64)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let a = &m["attachment"];
            (
                a["kind"].as_str().unwrap().to_string(),
                a["mime"].as_str().unwrap().to_string(),
                a["duration_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("voice".to_string(), "audio/wav".to_string(), 2_000),
            ("video".to_string(), "video/mp4".to_string(), 42_000),
        ]
    );
    let plain = ravi_node.command(&["history", "Asha"]);
    let plain = plain.json["stdout"].as_str().unwrap();
    assert!(plain.contains("[voice hello.rec, 15 KiB, 0:02]"), "{plain}");
    assert!(plain.contains("[video clip.mp4, 5 KiB, 0:42]"), "{plain}");
}

#[test]
fn bad_attachments_get_a_clear_error_and_send_nothing() {
    let asha = Home::with_account(ASHA, "Asha");
    asha.ok(&["contacts", "add", RAVI, "--name", "Ravi"]);
    let (code, err) = asha.fail(&["send", "Ravi", "--file", "/nonexistent/file.bin"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read /nonexistent/file.bin"), "{err}");
    std::fs::write(asha.file("not-a-photo.png"), b"hello").unwrap();
    let fake = asha.file("not-a-photo.png");
    let (code, err) = asha.fail(&["send", "Ravi", "--photo", fake.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a photo"), "{err}");
    let (code, err) = asha.fail(&["send", "Ravi", "--photo", "a.png", "--file", "b.bin"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = asha.fail(&["attachments", "save", "1234"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a message id"), "{err}");
    let history = asha.json(&["history", "Ravi"]);
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(0),
        "nothing was queued"
    );
}

#[test]
fn a_100_mib_file_completes_identical_after_the_sender_is_killed_half_way() {
    let Pair {
        asha,
        ravi,
        asha_node,
        ravi_node,
        ravi_events,
        ravi_addr,
    } = linked();

    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..100 * 1024 * 1024 / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let big = asha.file("big.bin");
    std::fs::write(&big, &data).unwrap();
    let sent =
        output(&asha_node.command(&["send", "--json", "Ravi", "--file", big.to_str().unwrap()]));
    let id = sent["id"].as_str().unwrap().to_string();

    // Half of the chunks are in at Ravi's: Asha's process dies on the spot.
    ravi_events.wait("attachment_progress", |d| {
        d["id"] == id.as_str() && d["stored"].as_u64().unwrap() * 2 >= d["total"].as_u64().unwrap()
    });
    asha_node.kill9();
    let history = output(&ravi_node.command(&["history", "--json", "Asha"]));
    let a = &history.as_array().unwrap()[0]["attachment"];
    assert_eq!(a["complete"], false, "the kill landed mid-transfer: {a}");
    let before = a["chunks_stored"].as_u64().unwrap();

    // Asha comes back; the transfer goes on from where it stopped.
    let _asha_node = asha.start_node_with(&["--peer", &ravi_addr]);
    ravi_events.wait("attachment_received", |d| d["id"] == id.as_str());
    assert!(
        save(&ravi, &ravi_node, &id, "big-saved.bin") == data,
        "the 100 MiB file is identical"
    );
    assert!(
        before >= 512,
        "at least half was in before the kill: {before}"
    );
}

fn relay_envelopes(r: &RelayProcess) -> u64 {
    r.metrics()
        .get("instaconnect_relay_envelopes")
        .copied()
        .unwrap_or(0.0) as u64
}

/// Long enough for a photo through a relay on a loaded machine.
const RELAYED: Duration = Duration::from_secs(120);

#[test]
fn a_photo_sent_while_the_recipient_is_offline_arrives_through_a_relay_byte_identical() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = RelayProcess::start(&dir.path().join("r"), &dir.path().join("r.log"), &[]);
    let asha = Home::with_account(ASHA, "Asha");
    let ravi = Home::with_account(RAVI, "Ravi");
    let mut ravi_node = ravi.start_node_with(&["--relay", &relay.addr]);
    let ravi_addr = ravi_node.wait_line("listening on ");
    let ravi_events = ravi_node.events();
    let asha_node = asha.start_node_with(&["--peer", &ravi_addr, "--relay", &relay.addr]);
    let asha_events = asha_node.events();
    asha.link(
        &asha_events,
        ASHA,
        &ravi,
        &ravi_events,
        RAVI,
        &ravi_node.peer_id,
        "Ravi",
    );
    // Each knows the mailbox the other opened for it on the relay.
    for (home, contact) in [(&asha, "Ravi"), (&ravi, ASHA)] {
        wait_until("the contact's mailbox on the relay", NODE_TIMEOUT, || {
            let relays = home.json(&["contacts", "show", contact])["relays"].clone();
            if relays == serde_json::json!([relay.peer_id]) {
                Ok(())
            } else {
                Err(relays)
            }
        });
    }
    // Ravi goes offline.
    let stopped = ravi_node.signal("TERM");
    assert!(stopped.status.success(), "{}", stopped.log);
    wait_until("Asha to see Ravi gone", NODE_TIMEOUT, || {
        let nearby = asha.json(&["nearby"]);
        let connected = nearby
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["connected"] == true);
        if connected {
            Err(nearby)
        } else {
            Ok(())
        }
    });

    // A photo of several chunks, sent with --wait: the CLI stays until Ravi has all of it.
    let photo = png(640, 480);
    assert!(
        photo.len() > 3 * 48 * 1024,
        "several chunks: {}",
        photo.len()
    );
    let path = asha.file("sunset.png");
    std::fs::write(&path, &photo).unwrap();
    let mut waiting = asha
        .cmd()
        .args([
            "send",
            "Ravi",
            "--photo",
            path.to_str().unwrap(),
            "--wait",
            "sunset",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn send --wait");
    let (mut out, mut err) = (
        waiting.stdout.take().unwrap(),
        waiting.stderr.take().unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((waiting.wait().expect("send --wait exits"), o, e));
    });

    // Every chunk is left in Ravi's mailbox on the relay, after the manifest.
    let done = asha_events.wait("attachment_send_progress", |d| {
        d["relayed"] == true && d["sent"] == d["total"]
    });
    let chunks = done["total"].as_u64().unwrap();
    assert!(chunks >= 3, "{done}");
    wait_until(
        "the relay to hold the manifest and every chunk",
        RELAYED,
        || match relay_envelopes(&relay) {
            n if n == 1 + chunks => Ok(()),
            n => Err(n),
        },
    );
    let id = done["id"].as_str().unwrap().to_string();

    // Ravi comes back at a new address that Asha does not know: only the relay links them.
    let ravi_node = ravi.start_node_with(&["--relay", &relay.addr]);
    let a = wait_until("Ravi to have the whole photo", RELAYED, || {
        let history = output(&ravi_node.command(&["history", "--json", "Asha"]));
        let a = history[0]["attachment"].clone();
        if a["complete"] == true {
            Ok(a)
        } else {
            Err(history)
        }
    });
    assert_eq!(a["name"], "sunset.png");
    assert_eq!(a["kind"], "photo");
    assert!(
        save(&ravi, &ravi_node, &id, "got.png") == photo,
        "the photo is byte-identical"
    );

    // Ravi told Asha he has it all: `send --wait` ends, having shown the progress.
    let (status, stdout, stderr) = rx.recv_timeout(RELAYED).expect("send --wait ended");
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&id), "{stdout}");
    assert!(
        stderr.contains("] 100% "),
        "a progress bar to the end: {stderr}"
    );
    assert!(stderr.contains("delivered"), "{stderr}");
    assert!(
        !stderr.contains('\r'),
        "no redrawing off a terminal: {stderr:?}"
    );
    wait_until(
        "the relay to hold nothing",
        RELAYED,
        || match relay_envelopes(&relay) {
            0 => Ok(()),
            n => Err(n),
        },
    );
}
