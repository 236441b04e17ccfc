//! Writes the audit fixtures under `fixtures/audit/`: one valid chain and one file per
//! kind of damage that `tests/audit_fixtures.rs` expects the verifier to report. The
//! keys, times and actor are fixed, so every run writes the same bytes.
//!
//! Usage: `cargo run --example gen_audit_fixtures -- fixtures/audit`

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, TimeZone, Utc};
use keyrot::audit::{
    Actor, CheckpointInfo, Detail, Outcome, Record, VerifyOptions, ZERO_HASH, checkpoint_digest,
    checkpoint_record, encode_line, format_ts, genesis_record, key_fingerprint, recovered_record,
    seal_line, verify,
};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};

/// Sequence numbers of the checkpoint lines in the valid chain.
const CHECKPOINTS: [u64; 2] = [4, 9];
/// Number of lines in the valid chain.
const LINES: u64 = 12;

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("fixtures/audit".to_owned()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let key = signing_key(b"keyrot audit fixture key");
    let other = signing_key(b"keyrot audit fixture other key");
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(dir.join("test-pubkey.pem"), pem).unwrap();

    let valid = Chain::build(&key, &key, LINES, |_| None);
    write(&dir, "valid.jsonl", &valid.lines);
    let head = serde_json::json!({
        "seq": LINES - 1,
        "hash": valid.hashes.last().unwrap(),
        "len": valid.lines.iter().map(Vec::len).sum::<usize>(),
    });
    std::fs::write(dir.join("valid.head.json"), format!("{head:#}\n")).unwrap();
    let state = dir.join("valid.state.json");
    let _ = std::fs::remove_file(&state);
    let opts = VerifyOptions {
        pubkey: Some(*key.verifying_key()),
        ledger_head: None,
        state: Some(state),
    };
    let report = verify(&dir.join("valid.jsonl"), &opts).unwrap();
    assert!(
        report.is_valid() && report.state_updated,
        "{}",
        report.to_text()
    );

    // Line 6 is seq 5, between the two checkpoints.
    let mut lines = valid.lines.clone();
    let at = lines[5].iter().position(|&b| b == b'd').unwrap();
    lines[5][at + 40] ^= 0x01;
    write(&dir, "byte-changed.jsonl", &lines);

    let mut lines = valid.lines.clone();
    lines.remove(5);
    write(&dir, "line-deleted.jsonl", &lines);

    let mut lines = valid.lines.clone();
    lines.swap(5, 6);
    write(&dir, "lines-swapped.jsonl", &lines);

    let mut lines = valid.lines.clone();
    lines.insert(6, lines[5].clone());
    write(&dir, "line-inserted.jsonl", &lines);

    write(&dir, "tail-cut.jsonl", &valid.lines[..8]);
    write(&dir, "older-copy.jsonl", &valid.lines[..6]);

    // Same prefix through seq 7, then a different but validly signed continuation.
    let forked = Chain::build(&key, &key, LINES, |seq| (seq >= 8).then_some("forked"));
    write(&dir, "forked.jsonl", &forked.lines);

    // Seq 5 changed and every later hash and checkpoint head recomputed, but the
    // checkpoint signatures cannot be, so the old ones stay.
    let rewritten = Chain::build(&key, &key, LINES, |seq| (seq == 5).then_some("rewritten"));
    let mut lines = rewritten.lines.clone();
    let old_sig = sig_of(&valid.lines[9]);
    let new_sig = sig_of(&lines[9]);
    let patched = String::from_utf8(lines[9].clone())
        .unwrap()
        .replace(&new_sig, &old_sig);
    lines[9] = reseal(patched.as_bytes());
    lines.truncate(10);
    write(&dir, "rewritten.jsonl", &lines);

    let signed_by_other = Chain::build(&key, &other, LINES, |_| None);
    write(&dir, "checkpoint-other-key.jsonl", &signed_by_other.lines);
    let other_chain = Chain::build(&other, &other, LINES, |_| None);
    write(&dir, "genesis-other-key.jsonl", &other_chain.lines);

    // A torn half of seq 12 at the end, and the same closed by its recovery record.
    let offset: usize = valid.lines.iter().map(Vec::len).sum();
    let next = valid.record_line(LINES, None);
    let torn = &next[..next.len() / 2];
    let mut lines = valid.lines.clone();
    lines.push(torn.to_vec());
    write(&dir, "torn-unrecovered.jsonl", &lines);
    let sha = hex::encode(Sha256::digest(torn));
    let rec = recovered_record(offset as u64, torn.len() as u64, &sha, actor());
    let (recovery, _) =
        encode_line(LINES, &time(LINES), valid.hashes.last().unwrap(), &rec).unwrap();
    let mut torn_line = torn.to_vec();
    torn_line.push(b'\n');
    lines[LINES as usize] = torn_line;
    lines.push(recovery);
    write(&dir, "torn-recovered.jsonl", &lines);

    let replace_line6 = |from: &str, to: &str, name: &str| {
        let mut lines = valid.lines.clone();
        let text = String::from_utf8(lines[5].clone()).unwrap();
        assert!(text.contains(from), "{from} not in line 6");
        lines[5] = reseal(text.replacen(from, to, 1).as_bytes());
        write(&dir, name, &lines);
    };
    replace_line6(
        "\"detail\":{\"n\":5}",
        "\"detail\":{\"n\":5,\"n\":6}",
        "duplicate-key.jsonl",
    );
    replace_line6(
        ",\"event\":",
        ",\"domain\":\"payments\",\"event\":",
        "duplicate-field.jsonl",
    );
    replace_line6(
        ",\"outcome\":",
        ",\"extra\":1,\"outcome\":",
        "unknown-field.jsonl",
    );
    replace_line6(
        "\"detail\":{\"n\":5}",
        "\"detail\":{\"n\":5.0}",
        "float.jsonl",
    );

    std::fs::write(dir.join("empty.jsonl"), b"").unwrap();
    std::fs::write(dir.join("not-json.jsonl"), b"this is not JSON\n").unwrap();
    eprintln!("wrote fixtures to {}", dir.display());
}

fn signing_key(seed: &[u8]) -> SigningKey {
    let scalar: [u8; 32] = Sha256::digest(seed).into();
    SigningKey::from_slice(&scalar).unwrap()
}

fn actor() -> Actor {
    Actor {
        user: "ctmagent".to_owned(),
        uid: 1001,
        host: "batch01".to_owned(),
        pid: 4242,
    }
}

fn time(seq: u64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).unwrap() + Duration::seconds(seq as i64)
}

fn write(dir: &Path, name: &str, lines: &[Vec<u8>]) {
    std::fs::write(dir.join(name), lines.concat()).unwrap();
}

/// Recomputes `h` of a line whose hashed part was edited.
fn reseal(line: &[u8]) -> Vec<u8> {
    let hashed_len = line.len() - ",\"h\":\"\"}\n".len() - 64;
    seal_line(&line[..hashed_len]).0
}

fn sig_of(line: &[u8]) -> String {
    let text = std::str::from_utf8(line).unwrap();
    let start = text.find("\"sig\":\"").unwrap() + 7;
    text[start..start + 128].to_owned()
}

struct Chain {
    lines: Vec<Vec<u8>>,
    hashes: Vec<String>,
}

impl Chain {
    /// Builds `count` lines. The genesis names `named`, checkpoints are signed by
    /// `signer`, and `domain_of` overrides the domain of ordinary lines.
    fn build(
        named: &SigningKey,
        signer: &SigningKey,
        count: u64,
        domain_of: impl Fn(u64) -> Option<&'static str>,
    ) -> Chain {
        let fingerprint = key_fingerprint(named.verifying_key());
        let genesis = genesis_record("fixture-log", &fingerprint, actor());
        let (line, hash) = encode_line(0, &time(0), ZERO_HASH, &genesis).unwrap();
        let mut chain = Chain {
            lines: vec![line],
            hashes: vec![hash],
        };
        for seq in 1..count {
            let line = if CHECKPOINTS.contains(&seq) {
                chain.checkpoint_line(seq, signer, &fingerprint)
            } else {
                chain.record_line(seq, domain_of(seq))
            };
            let hashed_len = line.len() - 73;
            chain.hashes.push(seal_line(&line[..hashed_len]).1);
            chain.lines.push(line);
        }
        chain
    }

    fn record_line(&self, seq: u64, domain: Option<&str>) -> Vec<u8> {
        let rec = Record {
            run: "run-0001".to_owned(),
            domain: domain.unwrap_or("payments").to_owned(),
            event: "rotation.step".to_owned(),
            actor: actor(),
            key: None,
            outcome: Outcome::Ok,
            detail: Detail::new().with("n", seq),
        };
        encode_line(seq, &time(seq), self.hashes.last().unwrap(), &rec)
            .unwrap()
            .0
    }

    fn checkpoint_line(&self, seq: u64, signer: &SigningKey, fingerprint: &str) -> Vec<u8> {
        let size: usize = self.lines.iter().map(Vec::len).sum();
        let head = self.hashes.last().unwrap().clone();
        let ts = format_ts(&time(seq));
        let digest = checkpoint_digest(seq - 1, &head, size as u64, &ts).unwrap();
        let sig: Signature = signer.sign_prehash(&digest).unwrap();
        let info = CheckpointInfo {
            seq: seq - 1,
            size: size as u64,
            head: head.clone(),
            ts,
            sig: hex::encode(sig.to_bytes()),
            line_seq: seq,
        };
        let rec = checkpoint_record(&info, fingerprint, "run-0001", actor());
        encode_line(seq, &time(seq), &head, &rec).unwrap().0
    }
}
