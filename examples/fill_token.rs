//! Fills a token with AES-256 secret keys whose labels are outside keyrot's `keyrot/`
//! namespace, so that benchmarks can measure how rotation cost grows with the number
//! of objects on the token. One process, one login, one `C_GenerateKey` per key,
//! which is much faster than one `pkcs11-tool` process per key.
//!
//! The PIN is read from a file so that it never appears in a process listing.
//! SoftHSM finds its token folder through `SOFTHSM2_CONF`, as for keyrot itself.
//!
//! Usage: `fill_token MODULE TOKEN_LABEL PIN_FILE COUNT LABEL_PREFIX`

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: fill_token MODULE TOKEN_LABEL PIN_FILE COUNT LABEL_PREFIX");
        std::process::exit(64);
    }
    let (module, token_label, pin_file, prefix) = (&args[1], &args[2], &args[3], &args[5]);
    let count: usize = args[4].parse().unwrap_or_else(|_| {
        eprintln!(
            "fill_token: COUNT must be a whole number, found {:?}",
            args[4]
        );
        std::process::exit(64);
    });
    let pin = std::fs::read_to_string(pin_file).unwrap_or_else(|e| {
        eprintln!("fill_token: failed to read PIN file {pin_file}: {e}");
        std::process::exit(66);
    });

    let context = Pkcs11::new(module).expect("load the PKCS#11 module");
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = context
        .get_slots_with_initialized_token()
        .expect("C_GetSlotList")
        .into_iter()
        .find(|slot| {
            context
                .get_token_info(*slot)
                .is_ok_and(|info| info.label().trim_end() == token_label)
        })
        .unwrap_or_else(|| {
            eprintln!("fill_token: no token labelled {token_label:?}");
            std::process::exit(69);
        });
    let session = context.open_rw_session(slot).expect("C_OpenSession");
    session
        .login(UserType::User, Some(&AuthPin::from(pin.trim_end())))
        .expect("C_Login");

    for index in 0..count {
        let template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::ValueLen(32.into()),
            Attribute::Label(format!("{prefix}-{index:06}").into_bytes()),
            Attribute::Id((index as u64).to_be_bytes().to_vec()),
        ];
        session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .expect("C_GenerateKey");
    }
}
