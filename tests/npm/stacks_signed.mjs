// Reads {"network", "publicKeys": [...], "numSignatures", "cases": [...]} on stdin. For each case
// (a signed transaction from the signers' order-independent multisig, as hex), @stacks/transactions
// decodes it and prints its txid; checks the origin (verifyOrigin: every signature recovers and the
// keys hash to the signer); recovers each signature's key over the presign sighash it computes
// itself and says whether that key is one of the set's; and builds the same unsigned transaction
// (makeUnsignedContractCall / makeUnsignedContractDeploy) to compare the signer hash.
import {
  AuthType,
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
      functionArgs: c.args.map((hex) => deserializeCV(hex)),
    });
  }
  out.push({
    txid: tx.txid(),
    verified,
    signers,
    in_set: signers.map((k) => input.publicKeys.includes(k)),
    signer_hash_matches: theirs.auth.spendingCondition.signer === cond.signer,
    unsigned_txid_of_library: theirs.txid(),
  });
}
process.stdout.write(JSON.stringify(out));
