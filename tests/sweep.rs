//! The sweep builder end to end: packages built from request sets, signed locally the way the
//! aggregate key would sign them (key path tweaked, script path untweaked), and every input of
//! every signed transaction checked by Bitcoin Core's own verifier (`bitcoinconsensus`, taproot
//! on). Also the fee split, the exclusion rules, BIP-125 replacement, reading a sweep back and
//! recomputing the fees the Stacks calls need.

use bitcoin::hashes::Hash as _;
use bitcoin::key::TapTweak as _;
use bitcoin::secp256k1::{schnorr, Keypair, Message, SecretKey, XOnlyPublicKey, SECP256K1};
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Txid};
use sbtc_hsm_signer::chain::bitcoin::deposit::{
    build_deposit_leaf, build_reclaim_leaf, standard_user_script,
};
use sbtc_hsm_signer::chain::bitcoin::idpack;
use sbtc_hsm_signer::chain::bitcoin::sweep::{
    assessed_fees, package, ParsedSweep, PegUtxo, Replaced, RequestRef, SweepDeposit, SweepError,
    SweepPackage, SweepParams, SweepPlan, SweepWithdrawal, MAX_IDPACK_LEN,
};
use sbtc_hsm_signer::chain::stacks::address::Principal;
use sbtc_hsm_signer::signing::SpendKind;

const MAGIC: [u8; 2] = *b"T3";

fn keypair(seed: u8) -> Keypair {
    Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[seed; 32]).unwrap())
}

fn x_only(seed: u8) -> XOnlyPublicKey {
    keypair(seed).x_only_public_key().0
}

/// The signers' aggregate key in these tests.
fn signers() -> Keypair {
    keypair(7)
}

fn peg(amount: u64) -> PegUtxo {
    PegUtxo {
        outpoint: OutPoint {
            txid: Txid::from_byte_array([0xee; 32]),
            vout: 0,
        },
        amount: Amount::from_sat(amount),
        key: signers().x_only_public_key().0,
    }
}

fn deposit_to(n: u32, amount: u64, max_fee: u64, key: XOnlyPublicKey) -> SweepDeposit {
    let recipient = Principal::standard(26, [(n % 251) as u8; 20]).unwrap();
    let mut txid = [0u8; 32];
    txid[..4].copy_from_slice(&n.to_be_bytes());
    SweepDeposit {
        outpoint: OutPoint {
            txid: Txid::from_byte_array(txid),
            vout: n % 2,
        },
        amount: Amount::from_sat(amount),
        max_fee: Amount::from_sat(max_fee),
        deposit_script: build_deposit_leaf(Amount::from_sat(max_fee), &recipient, key),
        reclaim_script: build_reclaim_leaf(144, &standard_user_script(x_only(99))),
        signers_key: key,
    }
}

fn deposit(n: u32, amount: u64, max_fee: u64) -> SweepDeposit {
    deposit_to(n, amount, max_fee, signers().x_only_public_key().0)
}

fn withdrawal(id: u64, amount: u64, max_fee: u64) -> SweepWithdrawal {
    SweepWithdrawal {
        request_id: id,
        // P2WPKH, the commonest withdrawal recipient.
        recipient: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([id as u8; 20])),
        amount: Amount::from_sat(amount),
        max_fee: Amount::from_sat(max_fee),
    }
}

fn params(sat_per_vb: u32) -> SweepParams {
    SweepParams::new(
        MAGIC,
        FeeRate::from_sat_per_vb_u32(sat_per_vb),
        signers().x_only_public_key().0,
    )
}

/// Signs every input as the signers would: the peg input with the tap-tweaked key, deposits
/// with the untweaked key of their leaf. `peg_key` signs vin[0], `deposit_key` the deposits.
fn sign_with(
    plan: &SweepPlan,
    peg_key: &Keypair,
    deposit_key: &Keypair,
) -> Vec<schnorr::Signature> {
    let tweaked = peg_key.tap_tweak(SECP256K1, None).to_keypair();
    plan.sighashes()
        .iter()
        .map(|r| {
            let message = Message::from_digest(r.sighash);
            match r.kind {
                SpendKind::KeySpend { merkle_root: None } => {
                    SECP256K1.sign_schnorr_no_aux_rand(&message, &tweaked)
                }
                SpendKind::ScriptPath => SECP256K1.sign_schnorr_no_aux_rand(&message, deposit_key),
                other => panic!("a sweep signs no {other:?}"),
            }
        })
        .collect()
}

fn sign(plan: &SweepPlan) -> Transaction {
    plan.finalize(&sign_with(plan, &signers(), &signers()))
        .expect("signatures by the right keys finalize")
}

/// Bitcoin Core's verdict on input `i`.
fn verify_input(tx: &Transaction, prevouts: &[TxOut], i: usize) -> Result<(), String> {
    let raw = bitcoin::consensus::serialize(tx);
    let utxos: Vec<bitcoinconsensus::Utxo> = prevouts
        .iter()
        .map(|o| bitcoinconsensus::Utxo {
            script_pubkey: o.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: o.script_pubkey.len() as u32,
            value: o.value.to_sat() as i64,
        })
        .collect();
    bitcoinconsensus::verify_with_flags(
        prevouts[i].script_pubkey.as_bytes(),
        prevouts[i].value.to_sat(),
        &raw,
        Some(&utxos),
        i,
        bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT,
    )
    .map_err(|e| format!("input {i}: {e:?}"))
}

fn verify_all(tx: &Transaction, prevouts: &[TxOut]) {
    assert_eq!(tx.input.len(), prevouts.len());
    for i in 0..tx.input.len() {
        verify_input(tx, prevouts, i).unwrap();
    }
}

/// The data of `OP_RETURN <push>`: after OP_PUSHBYTES_N, or OP_PUSHDATA1 and its length.
fn op_return_data(script: &ScriptBuf) -> Vec<u8> {
    let bytes = script.as_bytes();
    assert_eq!(bytes[0], 0x6a, "not an OP_RETURN");
    let data = if bytes[1] == 0x4c {
        &bytes[3..]
    } else {
        &bytes[2..]
    };
    assert_eq!(
        data.len(),
        if bytes[1] == 0x4c { bytes[2] } else { bytes[1] } as usize
    );
    data.to_vec()
}

fn rules(package: &SweepPackage) -> Vec<(RequestRef, &'static str)> {
    package
        .excluded
        .iter()
        .map(|e| (e.request, e.rule))
        .collect()
}

/// Checks every rule a plan must keep whatever the requests: layout, value conservation, the
/// fee rate, the fee split, and agreement with `assessed_fees`.
fn check_plan(plan: &SweepPlan, p: &SweepParams) {
    let tx = &plan.tx;
    assert_eq!(tx.version, bitcoin::transaction::Version::TWO);
    assert_eq!(tx.lock_time, bitcoin::absolute::LockTime::ZERO);
    assert!(tx.input.iter().all(|i| i.sequence == Sequence::ZERO));
    assert_eq!(tx.input[0].previous_output, plan.peg_in.outpoint);
    assert_eq!(
        tx.output[0].script_pubkey,
        ScriptBuf::new_p2tr(SECP256K1, p.new_key, None)
    );
    // Deposits sorted by outpoint, withdrawals by id.
    let outpoints: Vec<_> = tx.input[1..].iter().map(|i| i.previous_output).collect();
    assert!(outpoints.windows(2).all(|w| w[0] < w[1]));
    let ids: Vec<_> = plan.withdrawals.iter().map(|(w, _)| w.request_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    // vout[0] = peg + Σ deposits − Σ withdrawals − fee.
    let inputs: u64 = plan.prevouts.iter().map(|o| o.value.to_sat()).sum();
    let outputs: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
    assert_eq!(inputs - outputs, plan.fee.to_sat());
    let paid: u64 = plan
        .withdrawals
        .iter()
        .map(|(w, _)| w.amount.to_sat())
        .sum();
    let swept: u64 = plan.deposits.iter().map(|(d, _)| d.amount.to_sat()).sum();
    assert_eq!(
        tx.output[0].value.to_sat(),
        plan.peg_in.amount.to_sat() + swept - paid - plan.fee.to_sat()
    );
    // At least ceil(vsize × rate), and the limits.
    let at_rate = (p.fee_rate.to_sat_per_kwu() * plan.vsize * 4).div_ceil(1000);
    assert!(plan.fee.to_sat() >= at_rate);
    assert!(plan.vsize <= p.max_tx_vsize);
    // The split covers the fee, and no request pays more than it allows.
    let shares: u64 = plan
        .deposits
        .iter()
        .map(|(_, f)| f.to_sat())
        .chain(plan.withdrawals.iter().map(|(_, f)| f.to_sat()))
        .sum();
    assert!(shares >= plan.fee.to_sat(), "{shares} < {}", plan.fee);
    assert!(shares < plan.fee.to_sat() + (plan.deposits.len() + plan.withdrawals.len()) as u64 + 1);
    for (d, f) in &plan.deposits {
        assert!(*f <= d.max_fee && *f <= d.amount && d.amount - *f >= Amount::from_sat(546));
    }
    for (w, f) in &plan.withdrawals {
        assert!(*f <= w.max_fee);
    }
    // The Stacks side recomputes exactly the same split from the transaction.
    let deposits: Vec<_> = plan.deposits.iter().map(|(d, _)| d.clone()).collect();
    let withdrawals: Vec<_> = plan.withdrawals.iter().map(|(w, _)| w.clone()).collect();
    assert_eq!(
        assessed_fees(tx, plan.peg_in.amount, &deposits, &withdrawals).unwrap(),
        plan.fee_split()
    );
}

#[test]
fn one_deposit_one_withdrawal_verifies_with_bitcoin_core() {
    let p = params(10);
    let peg = peg(1_000_000);
    let d = deposit(1, 200_000, 20_000);
    let w = withdrawal(42, 50_000, 20_000);
    let package = package(&peg, std::slice::from_ref(&d), std::slice::from_ref(&w), &p);
    assert!(package.excluded.is_empty(), "{:?}", package.excluded);
    assert_eq!(package.txs.len(), 1);
    let plan = &package.txs[0];
    check_plan(plan, &p);
    assert_eq!(plan.deposits[0].0, d);
    assert_eq!(plan.withdrawals[0].0, w);
    // vout[1]: magic ‖ 0x01 ‖ idpack([42]); vout[2]: the payout.
    let mut data = MAGIC.to_vec();
    data.push(1);
    data.extend(idpack::encode(&[42]));
    assert_eq!(plan.tx.output[1].value, Amount::ZERO);
    assert_eq!(op_return_data(&plan.tx.output[1].script_pubkey), data);
    assert_eq!(plan.tx.output[2].script_pubkey, w.recipient);
    assert_eq!(plan.tx.output[2].value, w.amount);
    assert_eq!(plan.fee.to_sat(), plan.vsize * 10);

    let signed = sign(plan);
    // Measured with dummy signatures, so the signed size is exactly what the fee paid for.
    assert_eq!(signed.vsize() as u64, plan.vsize);
    assert_eq!(signed.weight(), plan.weight);
    assert_eq!(signed.compute_txid(), plan.txid());
    verify_all(&signed, &plan.prevouts);
    // The deposit witness is [sig ‖ 0x01, leaf, control block].
    let witness: Vec<&[u8]> = signed.input[1].witness.iter().collect();
    assert_eq!(witness.len(), 3);
    assert_eq!(witness[0].len(), 65);
    assert_eq!(witness[0][64], 0x01);
    assert_eq!(witness[1], d.deposit_script.as_bytes());
    assert_eq!(signed.input[0].witness.len(), 1);

    // The next sweep spends vout[0].
    let next = plan.new_peg();
    assert_eq!(
        next.outpoint,
        OutPoint {
            txid: plan.txid(),
            vout: 0
        }
    );
    assert_eq!(next.script_pubkey(), signed.output[0].script_pubkey);
    assert_eq!(next.amount, signed.output[0].value);

    // The guard's view of it.
    let intent = plan.spend_intent();
    assert_eq!(intent.txid, plan.txid());
    assert_eq!(intent.spends, vec![peg.outpoint, d.outpoint]);
    assert_eq!(intent.deposits, vec![d.outpoint]);
    assert_eq!(intent.withdrawals.len(), 1);
    assert_eq!(intent.withdrawals[0].request_id, 42);
    assert_eq!(intent.fee, plan.fee);
    assert_eq!(intent.weight, signed.weight());
    assert_eq!(intent.change, vec![signed.output[0].clone()]);
}

#[test]
fn a_signature_by_the_wrong_key_is_refused_and_fails_bitcoin_core() {
    let p = params(5);
    let package = package(
        &peg(500_000),
        &[deposit(1, 100_000, 10_000), deposit(2, 100_000, 10_000)],
        &[],
        &p,
    );
    let plan = &package.txs[0];
    let good = sign(plan);
    verify_all(&good, &plan.prevouts);

    // The deposits signed by another key: finalize names the first bad input...
    let wrong = keypair(8);
    let sigs = sign_with(plan, &signers(), &wrong);
    match plan.finalize(&sigs) {
        Err(SweepError::BadSignature {
            input: 1, outpoint, ..
        }) => {
            assert_eq!(outpoint, plan.tx.input[1].previous_output)
        }
        other => panic!("expected a bad signature on input 1, got {other:?}"),
    }
    // ...and Bitcoin Core refuses that input if it is put in anyway, while the others pass.
    let mut forged = good.clone();
    let mut bad = sigs[2].serialize().to_vec();
    bad.push(0x01);
    let mut items: Vec<Vec<u8>> = forged.input[2].witness.iter().map(<[u8]>::to_vec).collect();
    items[0] = bad;
    forged.input[2].witness = bitcoin::Witness::from_slice(&items);
    assert!(verify_input(&forged, &plan.prevouts, 2).is_err());
    verify_input(&forged, &plan.prevouts, 0).unwrap();
    verify_input(&forged, &plan.prevouts, 1).unwrap();
    // A key-path signature with the untweaked key is refused too.
    let untweaked: Vec<_> = plan
        .sighashes()
        .iter()
        .map(|r| SECP256K1.sign_schnorr_no_aux_rand(&Message::from_digest(r.sighash), &signers()))
        .collect();
    assert!(matches!(
        plan.finalize(&untweaked),
        Err(SweepError::BadSignature { input: 0, .. })
    ));
    assert!(matches!(
        plan.finalize(&sigs[..2]),
        Err(SweepError::SignatureCount {
            expected: 3,
            got: 2,
            ..
        })
    ));
}

/// Vbytes of a sweep with no requests, and of one deposit input with its witness: what the
/// fewest-transactions arithmetic below counts with.
const EMPTY_SWEEP_WEIGHT: u64 = 4 * (4 + 4 + 1 + 1 + 41 + 43 + 14) + 2 + 67;
const DEPOSIT_WEIGHT: u64 = 4 * 41 + (1 + 66 + 67 + 66);

fn thousand_deposits() -> Vec<SweepDeposit> {
    (0..1_000).map(|n| deposit(n, 100_000, 10_000)).collect()
}

#[test]
fn a_thousand_deposits_fit_one_standard_transaction() {
    // 1,000 × 91 vB + 126 vB ≈ 91 kvB: under the 100 kvB standard limit, so one transaction.
    assert_eq!(DEPOSIT_WEIGHT, 364);
    let p = params(2);
    let deposits = thousand_deposits();
    let package = package(&peg(1_000_000), &deposits, &[], &p);
    assert!(package.excluded.is_empty(), "{:?}", package.excluded);
    assert_eq!(package.txs.len(), 1);
    let plan = &package.txs[0];
    assert_eq!(plan.deposits.len(), 1_000);
    assert_eq!(
        plan.vsize,
        (EMPTY_SWEEP_WEIGHT + 4 * 2 + 1_000 * DEPOSIT_WEIGHT).div_ceil(4),
        "a 1,000-input transaction has 3-byte input counts"
    );
    assert!(plan.vsize <= 100_000);
    check_plan(plan, &p);
    let signed = sign(plan);
    assert_eq!(signed.vsize() as u64, plan.vsize);
    // Bitcoin Core checks every 25th input and the last: each check rehashes the whole 91 kB
    // transaction, so all 1,001 would take ~20 s unoptimised. The chained test below checks
    // every input of the same 1,000 deposits.
    for i in (0..=1_000).step_by(25) {
        verify_input(&signed, &plan.prevouts, i).unwrap();
    }
}

#[test]
fn deposits_beyond_one_transaction_chain_in_the_fewest_transactions() {
    let mut p = params(3);
    p.max_tx_vsize = 10_000;
    let deposits = thousand_deposits();
    let package = package(&peg(1_000_000), &deposits, &[], &p);
    assert!(package.excluded.is_empty(), "{:?}", package.excluded);
    // A transaction of k deposits weighs EMPTY + k × 364 (under 253 inputs).
    let per_tx = (4 * 10_000 - EMPTY_SWEEP_WEIGHT) / DEPOSIT_WEIGHT;
    assert_eq!(per_tx, 108);
    assert_eq!(package.txs.len(), 1_000usize.div_ceil(per_tx as usize));
    let mut peg_in = peg(1_000_000);
    let mut swept = 0;
    let mut total_vsize = 0;
    for (k, plan) in package.txs.iter().enumerate() {
        // Chained: each spends the previous vout[0].
        assert_eq!(plan.peg_in, peg_in, "tx {k}");
        check_plan(plan, &p);
        if k + 1 < package.txs.len() {
            assert_eq!(plan.deposits.len(), per_tx as usize, "tx {k} is full");
            assert!(plan.vsize + DEPOSIT_WEIGHT / 4 > 10_000);
        }
        swept += plan.deposits.len();
        total_vsize += plan.vsize;
        let signed = sign(plan);
        verify_all(&signed, &plan.prevouts);
        peg_in = plan.new_peg();
    }
    assert_eq!(swept, 1_000);
    assert!(total_vsize <= p.max_package_vsize);
}

#[test]
fn what_the_package_limits_leave_out_waits_for_the_next_block() {
    let mut p = params(1);
    p.max_tx_vsize = 2_000;
    let deposits = thousand_deposits();
    let package = package(&peg(1_000_000), &deposits, &[], &p);
    // 20 deposits per transaction, at most 25 transactions: 500 swept, 500 wait.
    let per_tx = ((4 * 2_000 - EMPTY_SWEEP_WEIGHT) / DEPOSIT_WEIGHT) as usize;
    assert_eq!(package.txs.len(), 25);
    let swept: usize = package.txs.iter().map(|t| t.deposits.len()).sum();
    assert_eq!(swept, 25 * per_tx);
    assert_eq!(package.excluded.len(), 1_000 - swept);
    // The ones left are the highest outpoints, all for lack of room.
    assert!(package
        .excluded
        .iter()
        .all(|e| e.rule == "does_not_fit_package" && e.reason.contains("next block")));
    let last_swept = package.txs[24].deposits.last().unwrap().0.outpoint;
    assert!(package
        .excluded
        .iter()
        .all(|e| matches!(e.request, RequestRef::Deposit(o) if o > last_swept)));

    // The package's total size binds too: here one large transaction and what room is left.
    let mut p = params(1);
    p.max_package_vsize = 60_000;
    p.max_tx_vsize = 50_000;
    let sized = package_of(&peg(1_000_000), &deposits, &[], &p);
    let total: u64 = sized.txs.iter().map(|t| t.vsize).sum();
    assert_eq!(sized.txs.len(), 2);
    assert!(
        total <= 60_000 && total + DEPOSIT_WEIGHT / 4 > 60_000,
        "{total}"
    );
}

#[test]
fn requests_over_their_limits_are_left_out_with_a_reason() {
    let p = params(20);
    let other_key = x_only(8);
    let deposits = vec![
        deposit(1, 300_000, 50_000),
        // A max fee below its share (~91 vB × 20 sat/vB plus overhead).
        deposit(2, 300_000, 500),
        // Its amount less its share would be dust.
        deposit(3, 3_000, 50_000),
        deposit_to(4, 300_000, 50_000, other_key),
        deposit(5, 300_000, 50_000),
    ];
    let withdrawals = vec![
        withdrawal(10, 40_000, 50_000),
        withdrawal(11, 40_000, 10),
        withdrawal(12, 545, 50_000),
        withdrawal(13, 40_000, 50_000),
    ];
    let package = package(&peg(100_000), &deposits, &withdrawals, &p);
    let mut excluded = rules(&package);
    excluded.sort();
    assert_eq!(
        excluded,
        vec![
            (
                RequestRef::Deposit(deposits[1].outpoint),
                "fee_above_max_fee"
            ),
            (
                RequestRef::Deposit(deposits[2].outpoint),
                "below_dust_after_fee"
            ),
            (
                RequestRef::Deposit(deposits[3].outpoint),
                "other_signers_key"
            ),
            (RequestRef::Withdrawal(11), "fee_above_max_fee"),
            (RequestRef::Withdrawal(12), "withdrawal_below_dust"),
        ]
    );
    let reason = |r: RequestRef| {
        package
            .excluded
            .iter()
            .find(|e| e.request == r)
            .unwrap()
            .reason
            .clone()
    };
    assert!(reason(RequestRef::Deposit(deposits[3].outpoint))
        .contains("locked to another signers' key"));
    assert!(reason(RequestRef::Deposit(deposits[1].outpoint)).contains("max fee"));
    // What remains is packed again without them and keeps every limit.
    assert_eq!(package.txs.len(), 1);
    let plan = &package.txs[0];
    check_plan(plan, &p);
    let swept: Vec<_> = plan.deposits.iter().map(|(d, _)| d.outpoint).collect();
    assert_eq!(swept, vec![deposits[0].outpoint, deposits[4].outpoint]);
    let paid: Vec<_> = plan.withdrawals.iter().map(|(w, _)| w.request_id).collect();
    assert_eq!(paid, vec![10, 13]);
    // A deposit and a withdrawal pay in proportion to their weight (364 vs 124 wu).
    let (d_fee, w_fee) = (plan.deposits[0].1.to_sat(), plan.withdrawals[0].1.to_sat());
    assert!(d_fee * 124 >= w_fee * 364 - 364 && d_fee * 124 <= w_fee * 364 + 364);
    verify_all(&sign(plan), &plan.prevouts);
}

#[test]
fn withdrawals_the_peg_cannot_pay_wait() {
    let p = params(10);
    // 60,000 sat of peg and one 30,000-sat deposit cannot pay 50,000 + 50,000.
    let package = package(
        &peg(60_000),
        &[deposit(1, 30_000, 10_000)],
        &[withdrawal(1, 50_000, 10_000), withdrawal(2, 50_000, 10_000)],
        &p,
    );
    assert_eq!(
        rules(&package),
        vec![(RequestRef::Withdrawal(2), "peg_cannot_pay")]
    );
    let plan = &package.txs[0];
    check_plan(plan, &p);
    assert!(plan.tx.output[0].value >= Amount::from_sat(546));
    // With nothing to pay it from, a withdrawal alone waits and no transaction is built.
    let package = package_alone();
    assert!(package.txs.is_empty());
    assert_eq!(
        rules(&package),
        vec![(RequestRef::Withdrawal(7), "peg_cannot_pay")]
    );
}

/// [`package`], for tests whose result is itself named `package`.
fn package_of(
    peg: &PegUtxo,
    deposits: &[SweepDeposit],
    withdrawals: &[SweepWithdrawal],
    p: &SweepParams,
) -> SweepPackage {
    package(peg, deposits, withdrawals, p)
}

fn package_alone() -> SweepPackage {
    package(
        &peg(10_000),
        &[],
        &[withdrawal(7, 50_000, 10_000)],
        &params(1),
    )
}

#[test]
fn a_replacement_pays_for_the_package_it_replaces() {
    let deposits: Vec<_> = (0..30).map(|n| deposit(n, 200_000, 30_000)).collect();
    let mut p = params(10);
    p.max_tx_vsize = 1_500;
    let old = package(&peg(1_000_000), &deposits, &[], &p);
    assert!(old.txs.len() >= 2);
    let old_fee: Amount = old.txs.iter().map(|t| t.fee).sum();
    let old_vsize: u64 = old.txs.iter().map(|t| t.vsize).sum();

    // The fee rate went up a little: the replacement's first transaction (the one that
    // conflicts, evicting the whole old chain) pays the old package's fees plus its own size at
    // the incremental rate; the others pay the new rate.
    let mut bump = p.clone();
    bump.fee_rate = FeeRate::from_sat_per_vb_u32(12);
    bump.replaces = Some(Replaced {
        fee: old_fee,
        vsize: old_vsize,
    });
    let new = package(&peg(1_000_000), &deposits, &[], &bump);
    let first = &new.txs[0];
    assert!(
        first.fee >= old_fee + Amount::from_sat(first.vsize),
        "{}",
        first.fee
    );
    assert!(first.fee.to_sat() * old_vsize >= old_fee.to_sat() * first.vsize);
    for plan in &new.txs[1..] {
        assert_eq!(plan.fee.to_sat(), plan.vsize * 12);
    }
    for plan in &new.txs {
        check_plan(plan, &bump);
    }
    // The first transaction's deposits bear that fee: when it exceeds what they allow they
    // are left out and the package is rebuilt with what remains.
    assert!(new
        .excluded
        .iter()
        .all(|e| e.rule == "fee_above_max_fee" || e.rule == "does_not_fit_package"));
    let swept: usize = new.txs.iter().map(|t| t.deposits.len()).sum();
    assert_eq!(swept + new.excluded.len(), 30);

    // Deposits that cannot bear the old package's fees are all left out.
    let mut cheap = bump.clone();
    cheap.replaces = Some(Replaced {
        fee: Amount::from_sat(1_000_000),
        vsize: 3_000,
    });
    let cheap_package = package(&peg(1_000_000), &deposits[..3], &[], &cheap);
    assert!(cheap_package.txs.is_empty());
    assert_eq!(cheap_package.excluded.len(), 3);
    assert!(cheap_package
        .excluded
        .iter()
        .all(|e| e.rule == "fee_above_max_fee"));
}

#[test]
fn a_signed_sweep_reads_back() {
    let p = params(4);
    let ids = [5u64, 6, 7, 1_000, 1_001];
    let withdrawals: Vec<_> = ids
        .iter()
        .map(|&id| withdrawal(id, 10_000, 5_000))
        .collect();
    let deposits = vec![deposit(3, 100_000, 10_000), deposit(9, 100_000, 10_000)];
    let peg = peg(500_000);
    let package = package(&peg, &deposits, &withdrawals, &p);
    assert!(package.excluded.is_empty());
    let plan = &package.txs[0];
    let signed = sign(plan);
    verify_all(&signed, &plan.prevouts);

    let parsed = ParsedSweep::parse(&signed, MAGIC).unwrap();
    assert_eq!(parsed.txid, plan.txid());
    assert_eq!(parsed.peg_in, peg.outpoint);
    assert_eq!(
        parsed.deposits,
        vec![deposits[0].outpoint, deposits[1].outpoint]
    );
    assert_eq!(parsed.new_peg, signed.output[0]);
    assert_eq!(parsed.new_peg_outpoint(), plan.new_peg().outpoint);
    let read: Vec<_> = parsed
        .withdrawals
        .iter()
        .map(|w| (w.request_id, w.vout, w.output.value))
        .collect();
    assert_eq!(
        read,
        ids.iter()
            .enumerate()
            .map(|(i, &id)| (id, i as u32 + 2, Amount::from_sat(10_000)))
            .collect::<Vec<_>>()
    );

    // The fees the Stacks calls use, from the signed transaction and all pending requests
    // (more than the sweep names; the extra ones are ignored).
    let mut pending = withdrawals.clone();
    pending.push(withdrawal(2_000, 10_000, 5_000));
    let split = assessed_fees(&signed, peg.amount, &deposits, &pending).unwrap();
    assert_eq!(split, plan.fee_split());
    assert_eq!(
        split.deposit(&deposits[1].outpoint),
        Some(plan.deposits[1].1)
    );
    assert_eq!(split.withdrawal(1_000), Some(plan.withdrawals[3].1));
    assert_eq!(split.withdrawal(2_000), None);

    // Another network's magic, a lost payout, a request missing or changed: refused.
    assert!(matches!(
        ParsedSweep::parse(&signed, *b"X2"),
        Err(SweepError::WrongMagic { found, .. }) if found == MAGIC
    ));
    let mut short = signed.clone();
    short.output.pop();
    assert!(matches!(
        ParsedSweep::parse(&short, MAGIC),
        Err(SweepError::NotASweep { .. })
    ));
    let mut garbage = signed.clone();
    let mut data = op_return_data(&garbage.output[1].script_pubkey);
    data.push(0x80);
    garbage.output[1].script_pubkey =
        ScriptBuf::new_op_return(bitcoin::script::PushBytesBuf::try_from(data).unwrap());
    assert!(matches!(
        ParsedSweep::parse(&garbage, MAGIC),
        Err(SweepError::IdPack { .. })
    ));
    assert!(matches!(
        assessed_fees(&signed, peg.amount, &deposits[..1], &withdrawals),
        Err(SweepError::UnknownDeposit { outpoint, .. }) if outpoint == deposits[1].outpoint
    ));
    let mut changed = withdrawals.clone();
    changed[2].amount = Amount::from_sat(9_999);
    assert!(matches!(
        assessed_fees(&signed, peg.amount, &deposits, &changed),
        Err(SweepError::WithdrawalMismatch {
            request_id: 7,
            vout: 4,
            ..
        })
    ));
    assert!(matches!(
        assessed_fees(&signed, Amount::from_sat(1_000), &deposits, &withdrawals),
        Err(SweepError::NegativeFee { .. })
    ));
}

#[test]
fn withdrawals_the_op_return_cannot_name_move_to_the_next_transaction() {
    let p = params(2);
    // Ids 1,000 apart: about 3 bytes each in the idpack, so some 25 per OP_RETURN.
    let withdrawals: Vec<_> = (0..100u64)
        .map(|i| withdrawal(i * 1_000, 10_000, 10_000))
        .collect();
    let package = package(&peg(5_000_000), &[], &withdrawals, &p);
    assert!(package.excluded.is_empty(), "{:?}", package.excluded);
    assert!(package.txs.len() >= 3);
    let mut paid = Vec::new();
    for plan in &package.txs {
        check_plan(plan, &p);
        let data = op_return_data(&plan.tx.output[1].script_pubkey);
        assert!(data.len() <= 80, "{} bytes", data.len());
        let ids = idpack::decode(&data[3..]).unwrap();
        assert!(idpack::encode(&ids).len() <= MAX_IDPACK_LEN);
        let parsed = ParsedSweep::parse(&sign(plan), MAGIC).unwrap();
        assert_eq!(parsed.withdrawals.len(), ids.len());
        paid.extend(ids);
    }
    assert_eq!(paid, (0..100u64).map(|i| i * 1_000).collect::<Vec<_>>());
}

#[test]
fn every_signer_builds_the_same_bytes_whatever_the_order() {
    let p = params(7);
    let deposits: Vec<_> = (0..40)
        .map(|n| deposit(n * 7 % 40, 150_000, 20_000))
        .collect();
    let withdrawals: Vec<_> = (0..15)
        .map(|i| withdrawal(100 + (i * 7) % 15, 20_000, 20_000))
        .collect();
    let a = package(&peg(2_000_000), &deposits, &withdrawals, &p);
    let mut shuffled_d = deposits.clone();
    shuffled_d.reverse();
    shuffled_d.rotate_left(13);
    // A request listed twice (two signers' views merged) changes nothing.
    shuffled_d.push(deposits[5].clone());
    let mut shuffled_w = withdrawals.clone();
    shuffled_w.rotate_left(4);
    let b = package(&peg(2_000_000), &shuffled_d, &shuffled_w, &p);
    assert_eq!(a, b);
    let bytes = |pkg: &SweepPackage| -> Vec<Vec<u8>> {
        pkg.txs
            .iter()
            .map(|t| bitcoin::consensus::serialize(&t.tx))
            .collect()
    };
    assert_eq!(bytes(&a), bytes(&b));
    // But two different versions of one request are not swept: the signers disagree on it.
    let mut conflicting = deposits.clone();
    let mut other = deposits[5].clone();
    other.amount = Amount::from_sat(150_001);
    conflicting.push(other);
    let c = package(&peg(2_000_000), &conflicting, &withdrawals, &p);
    assert_eq!(
        rules(&c),
        vec![
            (RequestRef::Deposit(deposits[5].outpoint), "duplicate"),
            (RequestRef::Deposit(deposits[5].outpoint), "duplicate"),
        ]
    );
}

#[test]
fn a_rotation_moves_the_peg_to_the_new_key() {
    let new_signers = keypair(21);
    let mut p = params(5);
    p.new_key = new_signers.x_only_public_key().0;
    p.max_tx_vsize = 1_000;
    let deposits: Vec<_> = (0..15).map(|n| deposit(n, 100_000, 10_000)).collect();
    let package = package(&peg(1_000_000), &deposits, &[], &p);
    assert!(package.txs.len() >= 2);
    // The first transaction's peg input is the old key's; every vout[0] is the new key's, so
    // the next transactions' peg inputs are signed with the new key (deposits stay the old
    // key's: their leaf names it).
    for (k, plan) in package.txs.iter().enumerate() {
        check_plan(plan, &p);
        let peg_key = if k == 0 { signers() } else { new_signers };
        let signed = plan
            .finalize(&sign_with(plan, &peg_key, &signers()))
            .unwrap();
        verify_all(&signed, &plan.prevouts);
        assert_eq!(plan.new_peg().key, p.new_key);
    }
}
