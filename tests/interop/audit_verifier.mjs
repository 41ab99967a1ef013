// An independent verifier of a gateway's audit log, over the officer API alone.
//
// Written from docs/protocol.md section 6, RFC 9162 section 2.1 (Merkle tree
// hash, inclusion and consistency proofs), https://c2sp.org/signed-note and
// https://c2sp.org/tlog-checkpoint; it shares no code with the gateway and uses
// nothing but Node's built-in modules (node:crypto for SHA-256 and Ed25519).
//
// Input, one JSON object on stdin:
//   url                  the gateway's base URL
//   officer_key          a privacy officer's API key (Authorization: Bearer)
//   subjects             clear subject ids that must appear nowhere in what is received
//   origin               optional: the origin (= key name) the log must have
//   previous_checkpoint  optional: an earlier signed checkpoint (note text) of the same
//                        log; its signature and its consistency with the latest are checked
//   forbidden            optional: {label: string} of other values that must appear nowhere
//   page_limit           optional: records per page while paging (default 100)
//   tamper               optional: act as if the gateway had answered wrongly, to show
//                        the checks fire: "proof" (one inclusion proof hash flipped),
//                        "consistency" (one consistency proof hash flipped), "root" (a bit
//                        of the checkpoint's root flipped), "signature" (a bit of its
//                        signature flipped), "rewrite" (one record altered, its leaf bytes
//                        re-encoded canonically and its leaf_hash recomputed, as a forger
//                        with database access would)
//
// Output: on success one JSON summary line on stdout and exit 0; otherwise
// {"ok": false, "reason": ...} and exit 1 (2 for a bug or unusable input).
//
// Besides checking what the gateway serves, every proof that verifies is also
// checked to fail once mutated (each proof hash flipped in turn, a root flipped,
// a hash added or removed), so a verifier that accepted anything would not pass.

import { createHash, createPublicKey, randomInt, verify as cryptoVerify } from 'node:crypto'

class Failure extends Error {}

const fail = (reason) => {
  throw new Failure(reason)
}

// ---------------------------------------------------------------- encodings

const sha256 = (...parts) => {
  const hash = createHash('sha256')
  for (const part of parts) hash.update(part)
  return hash.digest()
}

// Standard base64 (RFC 4648 section 4) with padding, canonical: anything else is refused.
const fromBase64 = (text, what) => {
  if (typeof text !== 'string' || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
    fail(`${what}: not standard padded base64`)
  }
  const bytes = Buffer.from(text, 'base64')
  if (bytes.toString('base64') !== text) fail(`${what}: not canonical base64`)
  return bytes
}

const base64url = (bytes) => Buffer.from(bytes).toString('base64url')

const utf8 = new TextDecoder('utf-8', { fatal: true })

const decodeUtf8 = (bytes, what) => {
  try {
    return utf8.decode(bytes)
  } catch {
    return fail(`${what}: not valid UTF-8`)
  }
}

// RFC 8785 (JCS) for the JSON a record holds: I-JSON strings and integers. Strings
// and numbers serialise as ECMAScript's JSON.stringify does (RFC 8785 3.2.2);
// member names sort by UTF-16 code units, which is what Array.prototype.sort does.
const canonical = (value) => {
  if (value === null || typeof value !== 'object') return JSON.stringify(value)
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  const names = Object.keys(value).sort()
  return `{${names.map((name) => `${JSON.stringify(name)}:${canonical(value[name])}`).join(',')}}`
}

const flipBit = (bytes, at = 0) => {
  const copy = Buffer.from(bytes)
  copy[at % copy.length] ^= 0x01
  return copy
}

// ---------------------------------------------------------------- RFC 9162 2.1

const leafHash = (leaf) => sha256(Buffer.from([0x00]), leaf)
const nodeHash = (left, right) => sha256(Buffer.from([0x01]), left, right)

// MTH over leaf hashes (RFC 9162 2.1.1): split at the largest power of two below n.
const merkleRoot = (hashes) => {
  const n = hashes.length
  if (n === 0) return sha256(Buffer.alloc(0))
  if (n === 1) return hashes[0]
  let k = 1
  while (k * 2 < n) k *= 2
  return nodeHash(merkleRoot(hashes.slice(0, k)), merkleRoot(hashes.slice(k)))
}

// RFC 9162 2.1.3.2, step by step, in BigInt so that no size is too large.
const verifyInclusion = (leafIndex, treeSize, hash, inclusionPath, rootHash) => {
  let fn = BigInt(leafIndex)
  let sn = BigInt(treeSize) - 1n
  // 1. leaf_index must be smaller than tree_size
  if (fn > sn) return false
  // 3. r = hash
  let r = hash
  // 4. for each p in inclusion_path
  for (const p of inclusionPath) {
    // a. sn == 0: fail
    if (sn === 0n) return false
    // b. LSB(fn) set, or fn == sn
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(p, r)
      // ii. unless LSB(fn) is set, shift until it is or fn is 0
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n
          sn >>= 1n
        }
      }
    } else {
      r = nodeHash(r, p)
    }
    // c. shift once
    fn >>= 1n
    sn >>= 1n
  }
  // 5. r must be the root and sn must be 0
  return sn === 0n && r.equals(rootHash)
}

// RFC 9162 2.1.4.2, step by step; first < second (equal sizes need no proof).
const verifyConsistency = (first, second, firstHash, secondHash, proof) => {
  if (!(0 < first && first < second)) return false
  // 1. an empty consistency_path fails
  if (proof.length === 0) return false
  const path = [...proof]
  // 2. first a power of two: prepend first_hash
  const firstBig = BigInt(first)
  if ((firstBig & (firstBig - 1n)) === 0n) path.unshift(firstHash)
  // 3.
  let fn = firstBig - 1n
  let sn = BigInt(second) - 1n
  // 4. shift while LSB(fn) is set
  while ((fn & 1n) === 1n) {
    fn >>= 1n
    sn >>= 1n
  }
  // 5.
  let fr = path[0]
  let sr = path[0]
  // 6.
  for (const c of path.slice(1)) {
    if (sn === 0n) return false
    if ((fn & 1n) === 1n || fn === sn) {
      fr = nodeHash(c, fr)
      sr = nodeHash(c, sr)
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n
          sn >>= 1n
        }
      }
    } else {
      sr = nodeHash(sr, c)
    }
    fn >>= 1n
    sn >>= 1n
  }
  // 7.
  return fr.equals(firstHash) && sr.equals(secondHash) && sn === 0n
}

// ---------------------------------------------------------------- C2SP notes and keys

const KEY_NAME = /^[^\s+]+$/u

// A C2SP verifier key: name "+" 8 lower-case hex digits "+" base64(0x01 || 32-byte key).
// Names hold no "+", but base64 may: split at the first two only.
const parseVerifierKey = (text) => {
  const first = text.indexOf('+')
  const second = text.indexOf('+', first + 1)
  if (first < 0 || second < 0) fail('key: not name+keyid+key')
  const [name, hex, encoded] = [text.slice(0, first), text.slice(first + 1, second), text.slice(second + 1)]
  if (!KEY_NAME.test(name)) fail('key: the name is empty or holds a space')
  if (!/^[0-9a-f]{8}$/.test(hex)) fail('key: the key id is not 8 hex digits')
  const material = fromBase64(encoded, 'key')
  if (material.length !== 33 || material[0] !== 0x01) fail('key: not an Ed25519 key (0x01 || 32 bytes)')
  const publicKey = material.subarray(1)
  const expectedId = sha256(Buffer.from(`${name}\n`, 'utf8'), Buffer.from([0x01]), publicKey).subarray(0, 4)
  if (!expectedId.equals(Buffer.from(hex, 'hex'))) fail('key: the key id is not SHA-256(name || 0x0A || 0x01 || key)[:4]')
  const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: base64url(publicKey) }, format: 'jwk' })
  return { name, keyId: expectedId, key, text }
}

// A signed note: text ending in "\n", a blank line, signature lines "— name base64(keyid || sig)".
const openNote = (note, verifier, { tamper } = {}) => {
  if (/[\u0000-\u0009\u000b-\u001f]/.test(note)) fail('checkpoint: holds a control character')
  const split = note.lastIndexOf('\n\n')
  if (split < 0 || !note.endsWith('\n')) fail('checkpoint: no blank line before the signatures')
  const text = note.slice(0, split + 1)
  const lines = note.slice(split + 2, -1).split('\n')
  let verified = 0
  for (const line of lines) {
    const match = /^\u2014 (\S+) (\S+)$/u.exec(line)
    if (!match) fail('checkpoint: malformed signature line')
    const [, name, encoded] = match
    let signature = fromBase64(encoded, 'checkpoint signature')
    if (signature.length < 5) fail('checkpoint: signature too short')
    // Signatures by other keys (witnesses, a rotated key) are ignored, as C2SP requires.
    if (name !== verifier.name || !signature.subarray(0, 4).equals(verifier.keyId)) continue
    if (signature.length !== 4 + 64) fail('checkpoint: not an Ed25519 signature')
    if (tamper === 'signature') signature = flipBit(signature, 10)
    const signed = Buffer.from(tamper === 'root' ? flipRootLine(text) : text, 'utf8')
    if (!cryptoVerify(null, signed, verifier.key, signature.subarray(4))) {
      fail(`checkpoint: the signature by ${name} does not verify`)
    }
    verified += 1
  }
  if (verified === 0) fail('checkpoint: no signature by the log key')
  const body = text.slice(0, -1).split('\n')
  if (body.length < 3) fail('checkpoint: fewer than three lines')
  const [origin, sizeText, rootText, ...extensions] = body
  if (!origin) fail('checkpoint: empty origin')
  if (!/^(0|[1-9][0-9]*)$/.test(sizeText)) fail('checkpoint: the tree size is not a decimal number')
  const size = Number(sizeText)
  if (!Number.isSafeInteger(size)) fail('checkpoint: tree size beyond what this verifier handles')
  const root = fromBase64(rootText, 'checkpoint root')
  if (root.length !== 32) fail('checkpoint: the root is not a SHA-256 hash')
  if (extensions.some((line) => line === '')) fail('checkpoint: empty extension line')
  return { origin, size, root, extensions, text: note }
}

// The checkpoint text as a forger would alter it: one bit of the root flipped.
const flipRootLine = (text) => {
  const lines = text.split('\n')
  lines[2] = flipBit(Buffer.from(lines[2], 'base64'), 5).toString('base64')
  return lines.join('\n')
}

// ---------------------------------------------------------------- HTTP

const received = []

const fetchOk = async (config, path, accept) => {
  const response = await fetch(new URL(path, config.url), {
    headers: { Authorization: `Bearer ${config.officer_key}` },
  })
  const body = Buffer.from(await response.arrayBuffer())
  const head = [...response.headers].map(([name, value]) => `${name}: ${value}`).join('\n')
  received.push(Buffer.from(head, 'utf8'), body)
  if (response.status !== 200) fail(`GET ${path}: status ${response.status}: ${body.toString('utf8').slice(0, 200)}`)
  const type = (response.headers.get('content-type') || '').split(';')[0].trim()
  if (type !== accept) fail(`GET ${path}: content type ${type}, not ${accept}`)
  const text = decodeUtf8(body, `GET ${path}`)
  if (accept !== 'application/json') return text
  try {
    return JSON.parse(text)
  } catch {
    return fail(`GET ${path}: the body is not JSON`)
  }
}

const hasMembers = (object, names, what) => {
  if (object === null || typeof object !== 'object' || Array.isArray(object)) fail(`${what}: not an object`)
  for (const name of names) if (!(name in object)) fail(`${what}: no "${name}"`)
}

const whole = (value, what) => {
  if (!Number.isSafeInteger(value) || value < 0) fail(`${what}: not a whole number`)
  return value
}

const hashList = (value, what) => {
  if (!Array.isArray(value)) fail(`${what}: not a list`)
  return value.map((item, i) => {
    const hash = fromBase64(item, `${what}[${i}]`)
    if (hash.length !== 32) fail(`${what}[${i}]: not a SHA-256 hash`)
    return hash
  })
}

// ---------------------------------------------------------------- the checks

// Every record of the log, oldest first, following next_cursor to its end.
const allRecords = async (config, limit, tamper) => {
  const byIndex = new Map()
  let cursor = null
  let pages = 0
  let last = -1
  do {
    const query = new URLSearchParams({ order: 'asc', limit: String(limit) })
    if (cursor !== null) query.set('cursor', cursor)
    const page = await fetchOk(config, `/v1/audit/records?${query}`, 'application/json')
    pages += 1
    hasMembers(page, ['records', 'next_cursor'], 'records page')
    if (!Array.isArray(page.records) || page.records.length > limit) fail('records page: bad "records"')
    if (page.next_cursor !== null && typeof page.next_cursor !== 'string') fail('records page: bad next_cursor')
    for (const item of page.records) {
      const index = whole(item.index, 'record index')
      if (index <= last) fail(`records: index ${index} after ${last} in ascending order`)
      last = index
      byIndex.set(index, item)
    }
    if (page.next_cursor !== null && page.records.length === 0) fail('records: an empty page with a cursor')
    cursor = page.next_cursor
    if (pages > 100000) fail('records: the cursor never ends')
  } while (cursor !== null)
  if (tamper === 'rewrite') rewriteOne(byIndex)
  return { byIndex, pages }
}

// What a forger with write access to the store would do: change one record and
// keep every per-record check passing (canonical bytes, matching leaf_hash).
const rewriteOne = (byIndex) => {
  const item = byIndex.get(0)
  if (!item || item.leaf === null) fail('tamper rewrite: no record 0 to rewrite')
  const record = { ...item.record, status: item.record.status === 200 ? 299 : 200 }
  const leaf = Buffer.from(canonical(record), 'utf8')
  byIndex.set(0, { ...item, leaf: leaf.toString('base64'), leaf_hash: leafHash(leaf).toString('base64'), record })
}

// The leaf hash of every served record (indices 0, 1, ... without a gap, at least
// the checkpoint's size of them), checking each leaf's bytes against its record.
const leafHashes = (byIndex, size) => {
  const hashes = []
  const leaves = []
  let deleted = 0
  const count = Math.max(size, byIndex.size)
  for (let index = 0; index < count; index += 1) {
    const item = byIndex.get(index)
    if (item === undefined) fail(`records: leaf ${index} was not served (the checkpoint has ${size})`)
    hasMembers(item, ['index', 'leaf', 'record'], `record ${index}`)
    if (item.leaf === null) {
      // Past retention: only the leaf hash is left (and the record with the bytes).
      if (item.record !== null) fail(`record ${index}: a record without leaf bytes`)
      const hash = fromBase64(item.leaf_hash, `record ${index} leaf_hash`)
      if (hash.length !== 32) fail(`record ${index}: leaf_hash is not a SHA-256 hash`)
      hashes.push(hash)
      deleted += 1
      continue
    }
    const leaf = fromBase64(item.leaf, `record ${index} leaf`)
    leaves.push(leaf)
    const text = decodeUtf8(leaf, `record ${index} leaf`)
    let parsed
    try {
      parsed = JSON.parse(text)
    } catch {
      fail(`record ${index}: the leaf bytes are not JSON`)
    }
    if (canonical(parsed) !== text) fail(`record ${index}: the leaf bytes are not RFC 8785 canonical JSON`)
    if (canonical(item.record) !== text) fail(`record ${index}: "record" differs from the leaf bytes`)
    if ('index' in parsed && parsed.index !== index) fail(`record ${index}: the leaf names index ${parsed.index}`)
    for (const member of ['schema_version', 'record_id', 'salt', 'time', 'kind']) {
      if (!(member in parsed)) fail(`record ${index}: no "${member}"`)
    }
    const hash = leafHash(leaf)
    if ('leaf_hash' in item && !fromBase64(item.leaf_hash, `record ${index} leaf_hash`).equals(hash)) {
      fail(`record ${index}: leaf_hash is not SHA-256(0x00 || leaf)`)
    }
    hashes.push(hash)
  }
  return { hashes, leaves, deleted }
}

const selfCheckInclusion = (index, size, hash, proof, root, counts) => {
  const must = (ok, what) => {
    if (ok) fail(`self-check: an inclusion proof of ${index} in ${size} still verified with ${what}`)
    counts.inclusion += 1
  }
  proof.forEach((_, i) => must(verifyInclusion(index, size, hash, proof.map((h, j) => (i === j ? flipBit(h, i) : h)), root), `hash ${i} flipped`))
  must(verifyInclusion(index, size, hash, proof, flipBit(root)), 'the root flipped')
  must(verifyInclusion(index, size, flipBit(hash), proof, root), 'the leaf hash flipped')
  must(verifyInclusion(index, size, hash, [...proof, hash], root), 'a hash added')
  if (proof.length > 0) must(verifyInclusion(index, size, hash, proof.slice(0, -1), root), 'a hash removed')
}

const selfCheckConsistency = (first, second, firstRoot, secondRoot, proof, counts) => {
  const must = (ok, what) => {
    if (ok) fail(`self-check: a consistency proof ${first}->${second} still verified with ${what}`)
    counts.consistency += 1
  }
  proof.forEach((_, i) => must(verifyConsistency(first, second, firstRoot, secondRoot, proof.map((h, j) => (i === j ? flipBit(h, i) : h))), `hash ${i} flipped`))
  must(verifyConsistency(first, second, flipBit(firstRoot), secondRoot, proof), 'the first root flipped')
  must(verifyConsistency(first, second, firstRoot, flipBit(secondRoot), proof), 'the second root flipped')
  must(verifyConsistency(first, second, firstRoot, secondRoot, [...proof, secondRoot]), 'a hash added')
  must(verifyConsistency(first, second, firstRoot, secondRoot, proof.slice(0, -1)), 'a hash removed')
}

const checkInclusion = async (config, index, size, hash, root, counts) => {
  const answer = await fetchOk(config, `/v1/audit/proof/inclusion?index=${index}&tree_size=${size}`, 'application/json')
  hasMembers(answer, ['index', 'tree_size', 'hashes'], 'inclusion proof')
  if (answer.index !== index || answer.tree_size !== size) fail(`inclusion proof: answered for ${answer.index} in ${answer.tree_size}`)
  let proof = hashList(answer.hashes, 'inclusion proof')
  if (config.tamper === 'proof' && proof.length > 0) {
    proof = proof.map((h, i) => (i === proof.length - 1 ? flipBit(h, 7) : h))
    config.tampered = true
  }
  if (!verifyInclusion(index, size, hash, proof, root)) fail(`inclusion proof of leaf ${index} in ${size} does not verify against the checkpoint root`)
  selfCheckInclusion(index, size, hash, proof, root, counts)
  return proof.length
}

const checkConsistency = async (config, first, second, firstRoot, secondRoot, counts) => {
  const answer = await fetchOk(config, `/v1/audit/proof/consistency?first=${first}&second=${second}`, 'application/json')
  hasMembers(answer, ['first', 'second', 'hashes'], 'consistency proof')
  if (answer.first !== first || answer.second !== second) fail(`consistency proof: answered for ${answer.first}->${answer.second}`)
  let proof = hashList(answer.hashes, 'consistency proof')
  if (first === second) {
    if (proof.length !== 0 || !firstRoot.equals(secondRoot)) fail(`consistency ${first}->${second}: equal sizes need equal roots and no proof`)
    return
  }
  if (config.tamper === 'consistency') {
    proof = proof.map((h, i) => (i === 0 ? flipBit(h, 3) : h))
    config.tampered = true
  }
  if (!verifyConsistency(first, second, firstRoot, secondRoot, proof)) fail(`consistency proof from ${first} to ${second} leaves does not verify`)
  selfCheckConsistency(first, second, firstRoot, secondRoot, proof, counts)
}

// Every spelling of a value that is easy to look for: as is, URL-encoded, hex, and
// base64 / base64url at each of the three byte alignments it can have in a longer text.
const spellings = (value) => {
  const bytes = Buffer.from(value, 'utf8')
  const found = new Set([value, encodeURIComponent(value), bytes.toString('hex')])
  for (let offset = 0; offset < 3; offset += 1) {
    const padded = Buffer.concat([Buffer.alloc(offset), bytes])
    const end = Math.floor(padded.length / 3) * 4
    for (const encoding of ['base64', 'base64url']) {
      const text = padded.toString(encoding).slice(offset === 0 ? 0 : 4, end)
      if (text.length >= 8) found.add(text)
    }
  }
  return [...found]
}

const scanFor = (needles, haystacks) => {
  for (const [label, value] of needles) {
    for (const spelling of spellings(value)) {
      const needle = Buffer.from(spelling, 'utf8')
      for (const bytes of haystacks) {
        if (bytes.includes(needle)) fail(`privacy: ${label} appears in what the gateway served`)
      }
    }
  }
}

const checkSubjectQueries = async (config, subjects) => {
  const matches = []
  for (const subject of subjects) {
    const query = new URLSearchParams({ subject, limit: '1000' })
    const page = await fetchOk(config, `/v1/audit/records?${query}`, 'application/json')
    hasMembers(page, ['records', 'next_cursor'], 'subject records page')
    for (const item of page.records) {
      if (item.record !== null && typeof item.record.subject !== 'string') fail('subject query: a match without a subject pseudonym')
    }
    matches.push(page.records.length)
  }
  return matches
}

const main = async () => {
  const input = JSON.parse(await new Promise((resolve, reject) => {
    const chunks = []
    process.stdin.on('data', (chunk) => chunks.push(chunk))
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    process.stdin.on('error', reject)
  }))
  const config = { ...input, tampered: false }
  if (typeof config.url !== 'string' || typeof config.officer_key !== 'string') throw new Error('input needs url and officer_key')
  const subjects = config.subjects || []
  const counts = { inclusion: 0, consistency: 0 }

  // 1. The log's verifier key.
  const keyText = await fetchOk(config, '/v1/audit/key', 'text/plain')
  if (!keyText.endsWith('\n') || keyText.slice(0, -1).includes('\n')) fail('key: not one line')
  const verifier = parseVerifierKey(keyText.slice(0, -1))
  if (config.origin && verifier.name !== config.origin) fail(`key: named ${verifier.name}, not ${config.origin}`)

  // 2. The latest checkpoint, signed by that key, with that origin.
  const checkpoint = openNote(await fetchOk(config, '/v1/audit/checkpoint', 'text/plain'), verifier, { tamper: config.tamper })
  if (checkpoint.origin !== verifier.name) fail(`checkpoint: origin ${checkpoint.origin} is not the key name ${verifier.name}`)
  if (checkpoint.size === 0) fail('checkpoint: the log is empty, nothing to verify')
  let previous = null
  if (config.previous_checkpoint) {
    previous = openNote(config.previous_checkpoint, verifier)
    if (previous.origin !== checkpoint.origin) fail('previous checkpoint: another origin')
    if (previous.size > checkpoint.size) fail('checkpoint: smaller than the previous one (the log shrank)')
  }

  // 3. Subject lookups first, so that their own officer-query records are among
  //    the records read next, and scanned with them.
  const subjectMatches = await checkSubjectQueries(config, subjects)

  // 4. Every record; the tree they make must have the signed root.
  const { byIndex, pages } = await allRecords(config, config.page_limit || 100, config.tamper)
  const { hashes, leaves, deleted } = leafHashes(byIndex, checkpoint.size)
  const computedRoot = merkleRoot(hashes.slice(0, checkpoint.size))
  if (!computedRoot.equals(checkpoint.root)) fail(`root: the tree of the first ${checkpoint.size} served leaves does not have the checkpoint's root`)
  if (previous && !merkleRoot(hashes.slice(0, previous.size)).equals(previous.root)) {
    fail(`root: the tree of the first ${previous.size} served leaves does not have the previous checkpoint's root`)
  }

  // 5. Inclusion proofs: first, last, middle and random leaves.
  const size = checkpoint.size
  const indices = new Set([0, size - 1, Math.floor(size / 2)])
  for (let i = 0; i < 3; i += 1) indices.add(randomInt(size))
  const inclusion = []
  for (const index of [...indices].sort((a, b) => a - b)) {
    const length = await checkInclusion(config, index, size, hashes[index], checkpoint.root, counts)
    inclusion.push({ index, proof_hashes: length })
  }

  // 6. Consistency proofs: from the previous checkpoint, and from earlier sizes whose
  //    roots this verifier computed itself.
  const firsts = new Map()
  if (previous && previous.size > 0) firsts.set(previous.size, previous.root)
  let power = 1
  while (power * 2 < size) power *= 2
  for (const first of [1, power, size - 1, 1 + randomInt(size)]) {
    if (first >= 1 && first <= size && !firsts.has(first)) firsts.set(first, merkleRoot(hashes.slice(0, first)))
  }
  const consistency = []
  for (const [first, firstRoot] of [...firsts].sort((a, b) => a[0] - b[0])) {
    await checkConsistency(config, first, size, firstRoot, checkpoint.root, counts)
    consistency.push([first, size])
  }

  // 7. Nothing received holds a clear subject id (or another forbidden value).
  const needles = subjects.map((subject, i) => [`subject #${i}`, subject])
  for (const [label, value] of Object.entries(config.forbidden || {})) needles.push([label, value])
  scanFor(needles, [...received, ...leaves])

  if (config.tamper && !config.tampered && !['signature', 'root', 'rewrite'].includes(config.tamper)) {
    throw new Error(`tamper ${config.tamper} found nothing to alter`)
  }
  return {
    ok: true,
    origin: checkpoint.origin,
    key_id: verifier.keyId.toString('hex'),
    checkpoint: { size, root: checkpoint.root.toString('base64') },
    previous_checkpoint: previous && { size: previous.size, root: previous.root.toString('base64') },
    records_served: byIndex.size,
    pages,
    leaves_deleted: deleted,
    inclusion,
    consistency,
    subject_matches: subjectMatches,
    subjects_scanned: subjects.length,
    responses_scanned: received.length / 2,
    bytes_scanned: received.reduce((total, bytes) => total + bytes.length, 0),
    self_checks_rejected: counts,
  }
}

try {
  const summary = await main()
  process.stdout.write(`${JSON.stringify(summary)}\n`)
} catch (error) {
  const known = error instanceof Failure
  process.stdout.write(`${JSON.stringify({ ok: false, reason: known ? error.message : `verifier error: ${error.stack}` })}\n`)
  process.exitCode = known ? 1 : 2
}
