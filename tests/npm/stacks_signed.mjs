// Reads {"network", "publicKeys": [...], "numSignatures", "cases": [...]} on stdin. For each case
// (a signed transaction from the signers' order-independent multisig, as hex), @stacks/transactions
// decodes it and prints its txid; checks the origin (verifyOrigin: every signature recovers and the
// keys hash to the signer); recovers each signature's key over the presign sighash it computes
// itself and says whether that key is one of the set's; and builds the same unsigned transaction
// (makeUnsignedContractCall / makeUnsignedContractDeploy) to compare the signer hash. A case with
// `build` ({kind: "deposits" | "withdrawals", entries: [...]}) has the library build a batch call's
// list argument itself (Cl.list of Cl.tuple) rather than decode ours, and prints its hex.
import {
  AuthType,
  Cl,
  serializeCV,
  deserializeCV,
  deserializeTransaction,
  makeUnsignedContractCall,
  makeUnsignedContractDeploy,
  publicKeyFromSignatureVrs,
  sigHashPreSign,
} from '@stacks/transactions';

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const buf = (hex) => Cl.bufferFromHex(hex);
const optional = (v, f) => (v === null ? Cl.none() : Cl.some(f(v)));

// The batch argument from plain fields, as a wallet or indexer would write it with the library.
function batchArgument(build) {
  if (build.kind === 'deposits') {
    return Cl.list(
      build.entries.map((e) =>
        Cl.tuple({
          txid: buf(e.txid),
          'vout-index': Cl.uint(e.voutIndex),
          amount: Cl.uint(e.amount),
          recipient: Cl.principal(e.recipient),
          'burn-hash': buf(e.burnHash),
          'burn-height': Cl.uint(e.burnHeight),
          'sweep-txid': buf(e.sweepTxid),
        }),
      ),
    );
  }
  return Cl.list(
    build.entries.map((e) =>
      Cl.tuple({
        'request-id': Cl.uint(e.requestId),
        status: Cl.bool(e.status),
        'signer-bitmap': Cl.uint(BigInt(e.signerBitmap)),
        'bitcoin-txid': optional(e.bitcoinTxid, buf),
        'output-index': optional(e.outputIndex, Cl.uint),
        fee: optional(e.fee, Cl.uint),
        'burn-hash': buf(e.burnHash),
        'burn-height': Cl.uint(e.burnHeight),
        'sweep-txid': optional(e.sweepTxid, buf),
      }),
    ),
  );
}

const out = [];
for (const c of input.cases) {
  const tx = deserializeTransaction(c.hex);
  const cond = tx.auth.spendingCondition;
  let verified = 'ok';
  try {
    tx.verifyOrigin();
  } catch (e) {
    verified = String(e.message || e);
  }
  const presign = sigHashPreSign(tx.verifyBegin(), AuthType.Standard, cond.fee, cond.nonce);
  const signers = cond.fields
    .filter((f) => f.contents.type === 9 /* a message signature, not a public key */)
    .map((f) => publicKeyFromSignatureVrs(presign, f.contents.data));
  const common = {
    numSignatures: input.numSignatures,
    publicKeys: input.publicKeys,
    useNonSequentialMultiSig: true,
    fee: cond.fee,
    nonce: cond.nonce,
    network: input.network,
    postConditionMode: 'allow',
  };
  let theirs;
  let libraryArgs = null;
  if (tx.payload.payloadType === 1 || tx.payload.payloadType === 6) {
    theirs = await makeUnsignedContractDeploy({
      ...common,
      contractName: tx.payload.contractName.content,
      codeBody: tx.payload.codeBody.content,
      clarityVersion: tx.payload.clarityVersion,
    });
  } else {
    theirs = await makeUnsignedContractCall({
      ...common,
      contractAddress: c.contractAddress,
      contractName: tx.payload.contractName.content,
      functionName: tx.payload.functionName.content,
      functionArgs: c.build
        ? [batchArgument(c.build)]
        : c.args.map((hex) => deserializeCV(hex)),
    });
    if (c.build) libraryArgs = [serializeCV(batchArgument(c.build))];
  }
  out.push({
    txid: tx.txid(),
    verified,
    signers,
    in_set: signers.map((k) => input.publicKeys.includes(k)),
    signer_hash_matches: theirs.auth.spendingCondition.signer === cond.signer,
    unsigned_txid_of_library: theirs.txid(),
    library_args: libraryArgs,
  });
}
process.stdout.write(JSON.stringify(out));
