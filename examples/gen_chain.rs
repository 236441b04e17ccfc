//! Writes a valid audit chain of a given number of lines, for benchmarks: about 370
//! bytes a line on average, near the shortest line the format allows, and a signed
//! checkpoint every 1,000 lines. The checkpoint key is a fixed software P-256 key, so
//! the output is the same on every run, and its public key is written as PEM next to
//! the chain.
//!
//! Usage: `gen_chain OUT_FILE LINES PUBKEY_PEM_OUT`

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use chrono::{Duration, TimeZone, Utc};
use keyrot::audit::{
    Actor, CheckpointInfo, Detail, KeyRef, Outcome, Record, ZERO_HASH, checkpoint_digest,
    checkpoint_record, encode_line, format_ts, genesis_record, key_fingerprint,
};
use keyrot::model::{KeyId, KeyState, key_label};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};

const CHECKPOINT_EVERY: u64 = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: gen_chain OUT_FILE LINES PUBKEY_PEM_OUT");
        std::process::exit(64);
    }
    let out = PathBuf::from(&args[1]);
    let lines: u64 = args[2].parse().expect("LINES must be an integer");
    let pem_out = PathBuf::from(&args[3]);

    let seed: [u8; 32] = Sha256::digest(b"keyrot benchmark checkpoint key").into();
    let key = SigningKey::from_slice(&seed).expect("seed is a valid scalar");
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("PEM encoding");
    std::fs::write(&pem_out, pem).expect("write public key");
    let fingerprint = key_fingerprint(key.verifying_key());

    let actor = Actor {
        user: "ctm".to_owned(),
        uid: 1001,
        host: "b1".to_owned(),
        pid: 4242,
    };
    let start = Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).unwrap();
    let mut writer = BufWriter::with_capacity(1 << 20, File::create(&out).expect("create output"));

    let genesis = genesis_record("bench-log", &fingerprint, actor.clone());
    let (line, mut prev) = encode_line(0, &start, ZERO_HASH, &genesis).unwrap();
    writer.write_all(&line).unwrap();
    let mut size = line.len() as u64;

    for seq in 1..lines {
        let ts = start + Duration::milliseconds(seq as i64);
        let rec = if seq.is_multiple_of(CHECKPOINT_EVERY) {
            let ts_text = format_ts(&ts);
            let digest = checkpoint_digest(seq - 1, &prev, size, &ts_text).unwrap();
            let sig: Signature = key.sign_prehash(&digest).expect("sign");
            let info = CheckpointInfo {
                seq: seq - 1,
                size,
                head: prev.clone(),
                ts: ts_text,
                sig: hex::encode(sig.to_bytes()),
                line_seq: seq,
            };
            checkpoint_record(&info, &fingerprint, "bench-run", actor.clone())
        } else {
            rotation_record(seq, actor.clone())
        };
        let (line, hash) = encode_line(seq, &ts, &prev, &rec).unwrap();
        writer.write_all(&line).unwrap();
        size += line.len() as u64;
        prev = hash;
    }
    writer.flush().unwrap();
    eprintln!("wrote {lines} lines, {size} bytes to {}", out.display());
}

/// Builds an ordinary rotation record: about 350 bytes as a line, or 440 on every
/// tenth line, which names a key.
fn rotation_record(seq: u64, actor: Actor) -> Record {
    let domain = format!("d{:02}", seq % 97);
    let version = (seq % 50) as u32 + 1;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    let key = seq.is_multiple_of(10).then(|| KeyRef {
        version,
        id: KeyId(id),
        label: key_label(&domain, version),
        state: KeyState::Active,
    });
    Record {
        run: format!("r{:06}", seq / 10),
        key,
        domain,
        event: "rotation.step".to_owned(),
        actor,
        outcome: Outcome::Ok,
        detail: Detail::new().with("n", seq),
    }
}
