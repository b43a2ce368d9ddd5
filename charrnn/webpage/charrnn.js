/* charrnn.js: a character RNN of this project (GRU, LSTM or plain RNN), run in
 * plain JavaScript. No dependencies; nothing here evaluates text as code.
 *
 *   const model = CharRNN.fromPage();                 // the model embedded in index.html
 *   const model = await CharRNN.load("model.json");   // or fetched, on a page of your own
 *   model.generate({prime: "ROMEO:", length: 200, temperature: 0.8, topK: 0, topP: 1,
 *                   seed: 1, argmax: false})          // -> the generated text (prime excluded)
 *   for (const ch of model.stream({...same options})) ...   // one character at a time
 *   model.probabilities("ROMEO")   // -> [V] next-character distribution after the text
 *   model.probabilities("ROMEO", {each: true})   // -> the distribution after every character
 *   model.loss(text)               // -> nats/char of predicting text, one character after another
 *   model.vocabulary, model.config, model.run        // what the page shows
 *   model.sampling   // the options rnn_play.py --export-web was given: the form's starting values
 *
 * As rnn_play.py does, the state starts at zero and reads the prime (a newline
 * when there is none); the unknown symbol is never sampled; top-k and top-p cut
 * the distribution after the temperature. A seed gives the same text every time
 * (this file's own generator: it does not match Python's draws).
 */
"use strict";

const CharRNN = (() => {
  const GATES = {gru: 3, lstm: 4, rnn: 1};

  function float16ToFloat32(bits) {  // Uint16Array -> Float32Array
    const out = new Float32Array(bits.length);
    for (let i = 0; i < bits.length; i++) {
      const h = bits[i], sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
      out[i] = exp === 0 ? sign * frac * 2 ** -24
        : exp === 31 ? (frac ? NaN : sign * Infinity) : sign * (1024 + frac) * 2 ** (exp - 25);
    }
    return out;
  }

  function decodeBase64(b64) {  // a native decoder where there is one: atob's string is slow to copy
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(b64);
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  /* {name: Float32Array} from a TensorFlow.js-style weightsManifest and its bytes. */
  function decodeWeights(manifest, bytes) {
    const weights = {};
    let offset = 0;
    for (const entry of manifest.weightsManifest[0].weights) {
      const n = entry.shape.reduce((a, b) => a * b, 1);
      const q = entry.quantization || {};
      const width = q.dtype === "uint8" ? 1 : q.dtype === "float16" ? 2 : 4;
      const raw = bytes.slice(offset, offset + n * width).buffer;  // a copy, aligned
      if (raw.byteLength !== n * width) throw new Error(`weights end before ${entry.name}`);
      if (q.dtype === "uint8") {
        const u = new Uint8Array(raw), w = new Float32Array(n);
        for (let i = 0; i < n; i++) w[i] = q.min + q.scale * u[i];
        weights[entry.name] = w;
      } else {
        weights[entry.name] = q.dtype === "float16" ? float16ToFloat32(new Uint16Array(raw)) : new Float32Array(raw);
      }
      offset += n * width;
    }
    return weights;
  }

  /* The one hot loop, out[j] = bias[j] + sum_i x[i] * W[i, j], in WebAssembly SIMD:
   * matvec(out, wt, x, bias, n, m), byte addresses into the imported memory, wt the
   * transpose of W [n, m] with m a multiple of 16 (rows zero-padded): per output one
   * dot product, four f32x4 accumulators, 16 floats a turn. Hand-assembled below (no
   * toolchain); the plain JavaScript `matvecJS` computes the same where WebAssembly
   * SIMD is missing. */
  const SIMD = 0xfd, f32x4add = [SIMD, 0xe4, 0x01], f32x4mul = [SIMD, 0xe6, 0x01];
  const get = (i) => [0x20, i], set = (i) => [0x21, i];
  const load = (base, offset) => [...get(2), ...get(6), 0x6a, SIMD, 0x00, 0x04, offset,  // x[i + offset]
    ...get(base), ...get(6), 0x6a, SIMD, 0x00, 0x04, offset, ...f32x4mul];               // * wt[i + offset]
  const accumulate = (acc, offset) => [...get(acc), ...load(1, offset), ...f32x4add, ...set(acc)];
  const zero = (acc) => [SIMD, 0x0c, ...new Array(16).fill(0), ...set(acc)];
  const lane = (k) => [...get(8), SIMD, 0x1f, k];
  const body = [
    0x02, 0x02, 0x7f, 0x04, 0x7b,  // locals: 6 i, 7 m in bytes (i32); 8-11 accumulators (v128)
    ...get(5), 0x41, 2, 0x74, ...set(7),
    0x02, 0x40, ...get(4), 0x45, 0x0d, 0,  // block; n == 0: done
    0x03, 0x40,  // loop over the outputs
    ...zero(8), ...zero(9), ...zero(10), ...zero(11), 0x41, 0, ...set(6),
    0x03, 0x40,  // loop over the inputs, 16 at a time (offsets 0, 16, 32, 48 bytes)
    ...accumulate(8, 0), ...accumulate(9, 16), ...accumulate(10, 32), ...accumulate(11, 48),
    ...get(6), 0x41, 0xc0, 0x00, 0x6a, 0x22, 6, ...get(7), 0x49, 0x0d, 0, 0x0b,  // i += 64; i < m: again
    ...get(8), ...get(9), ...f32x4add, ...get(10), ...f32x4add, ...get(11), ...f32x4add, ...set(8),
    ...get(0), ...get(3), 0x2a, 0x02, 0x00,  // out, bias[j]
    ...lane(0), ...lane(1), 0x92, ...lane(2), 0x92, ...lane(3), 0x92, 0x92, 0x38, 0x02, 0x00,  // out[j] = bias[j] + sum
    ...get(0), 0x41, 4, 0x6a, ...set(0), ...get(3), 0x41, 4, 0x6a, ...set(3),
    ...get(1), ...get(7), 0x6a, ...set(1),
    ...get(4), 0x41, 1, 0x6b, 0x22, 4, 0x0d, 0, 0x0b,  // n -= 1; n != 0: again
    0x0b, 0x0b,  // end block, end function
  ];
  const leb = (n) => { const out = []; do { let b = n & 0x7f; n >>>= 7; if (n) b |= 0x80; out.push(b); } while (n); return out; };
  const section = (id, bytes) => [id, ...leb(bytes.length), ...bytes];
  const text = (s) => [s.length, ...Array.from(s, (c) => c.charCodeAt(0))];
  const WASM = new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 6, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0]),    // type: (i32 x 6) -> ()
    ...section(2, [1, ...text("env"), ...text("memory"), 0x02, 0x00, 1]),   // import env.memory
    ...section(3, [1, 0]),                                                  // one function
    ...section(7, [1, ...text("matvec"), 0x00, 0]),                         // exported
    ...section(10, [1, ...leb(body.length), ...body]),
  ]);

  /* out[j] = bias[j] + sum_i x[i] * wt[j * m + i], j < n: matvec in plain JavaScript. */
  function matvecJS(out, wt, x, bias, n, m) {
    for (let j = 0; j < n; j++) {
      const row = j * m;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let i = 0; i < m; i += 4) {  // m is a multiple of 16
        s0 += x[i] * wt[row + i]; s1 += x[i + 1] * wt[row + i + 1];
        s2 += x[i + 2] * wt[row + i + 2]; s3 += x[i + 3] * wt[row + i + 3];
      }
      out[j] = bias[j] + (s0 + s1) + (s2 + s3);
    }
  }

  const pad16 = (n) => Math.ceil(n / 16) * 16;

  /* The float32 heap the weights and the vectors live in: a WebAssembly memory when
   * WebAssembly SIMD runs here (then `simd` is its matvec), else a plain buffer. */
  class Heap {
    constructor(floats, useWasm) {
      const bytes = floats * 4 + 4096;
      this.simd = null;
      if (useWasm && typeof WebAssembly === "object" && WebAssembly.validate(WASM)) {
        this.memory = new WebAssembly.Memory({initial: Math.ceil(bytes / 65536)});
        const instance = new WebAssembly.Instance(new WebAssembly.Module(WASM), {env: {memory: this.memory}});
        this.simd = instance.exports.matvec;
        this.buffer = this.memory.buffer;
      } else {
        this.buffer = new ArrayBuffer(bytes);
      }
      this.top = 0;
    }
    alloc(n) {  // a zeroed Float32Array of n floats, 64-byte aligned
      const view = new Float32Array(this.buffer, this.top, n);
      this.top += Math.ceil(n / 16) * 64;
      return view;
    }
  }

  /* A weight matrix W [rows, cols] (row-major, Keras's layout) held transposed and
   * padded in the heap; apply(x) -> bias + x W, a view overwritten by the next apply. */
  class Matrix {
    constructor(heap, w, rows, cols, bias) {
      this.heap = heap; this.n = cols; this.m = pad16(rows);
      this.wt = heap.alloc(cols * this.m);
      for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) this.wt[j * this.m + i] = w[i * cols + j];
      this.bias = heap.alloc(cols);
      if (bias) this.bias.set(bias);
      this.x = heap.alloc(this.m);
      this.out = heap.alloc(cols);
    }
    apply(x) {
      this.x.set(x);
      if (this.heap.simd) {
        this.heap.simd(this.out.byteOffset, this.wt.byteOffset, this.x.byteOffset, this.bias.byteOffset, this.n, this.m);
      } else {
        matvecJS(this.out, this.wt, this.x, this.bias, this.n, this.m);
      }
      return this.out;
    }
  }

  const sigmoid = (x) => 1 / (1 + Math.exp(-x));

  function mulberry32(seed) {  // a small, fast, seedable generator of uniforms in [0, 1)
    let a = (seed >>> 0) ^ Math.imul(Math.floor(seed / 4294967296) >>> 0, 0x9e3779b1);
    return () => {
      a = (a + 0x6d2b79f5) | 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function checkOptions(o) {
    const opts = {prime: "", length: 1000, temperature: 1, topK: 0, topP: 1, seed: null, argmax: false, ...o};
    if (typeof opts.prime !== "string") throw new Error("prime must be a string");
    if (!Number.isInteger(opts.length) || opts.length < 0) throw new Error(`length must be an integer >= 0 (got ${opts.length})`);
    if (!(opts.temperature > 0)) throw new Error(`temperature must be > 0 (got ${opts.temperature})`);
    if (!Number.isInteger(opts.topK || 0) || opts.topK < 0) throw new Error(`topK must be an integer >= 0, 0 for no limit (got ${opts.topK})`);
    if (!(opts.topP > 0 && opts.topP <= 1)) throw new Error(`topP must be in (0, 1] (got ${opts.topP})`);
    if (opts.seed === null || opts.seed === undefined || opts.seed === "") opts.seed = Math.floor(Math.random() * 2 ** 32);
    if (!Number.isSafeInteger(opts.seed)) throw new Error(`seed must be an integer (got ${opts.seed})`);
    return opts;
  }

  /* The next id from logits: argmax, or a draw after temperature, top-k and top-p; never `banned`. */
  function pick(logits, o, random, banned) {
    const V = logits.length, z = new Float64Array(V);
    for (let j = 0; j < V; j++) z[j] = j === banned ? -Infinity : o.argmax ? logits[j] : logits[j] / o.temperature;
    let best = 0;
    for (let j = 1; j < V; j++) if (z[j] > z[best]) best = j;
    if (o.argmax) return best;
    const sorted = Array.from(z).sort((a, b) => b - a);
    let cut = o.topK && o.topK < V ? sorted[o.topK - 1] : -Infinity;  // keep z >= cut, ties kept
    if (o.topP < 1) {  // keep a character while the mass before it is < topP: the top one always
      let total = 0, before = 0, kept = 0;
      for (const v of sorted) total += Math.exp(v - sorted[0]);
      while (kept < V && before < o.topP) before += Math.exp(sorted[kept++] - sorted[0]) / total;
      cut = Math.max(cut, sorted[kept - 1]);
    }
    let total = 0;
    for (let j = 0; j < V; j++) total += z[j] >= cut ? Math.exp(z[j] - z[best]) : 0;
    let u = random() * total;
    for (let j = 0; j < V; j++) {
      if (z[j] < cut) continue;
      u -= Math.exp(z[j] - z[best]);
      if (u < 0) return j;
    }
    return best;
  }

  class Model {
    /* manifest: the parsed model.json; bytes: Uint8Array of weights.bin; wasm: false
     * runs the plain JavaScript matvec even where WebAssembly SIMD runs. */
    constructor(manifest, bytes, {wasm = true} = {}) {
      const c = manifest.model;
      if (!(c.cell in GATES)) throw new Error(`unknown cell ${c.cell}`);
      this.config = c;
      this.run = manifest.run;
      this.sampling = manifest.sampling || {};  // the export's rnn_play.py flags: the page's starting options
      this.vocabulary = manifest.vocabulary;
      this.unknown = manifest.unknown;
      this.ids = new Map(this.vocabulary.map((ch, i) => [ch, i]));
      const w = decodeWeights(manifest, bytes);
      const U = c.units, G = GATES[c.cell] * U, V = c.vocab_size;
      const shapes = [[U, V]];  // every matrix, [rows, cols], to size the heap
      for (let l = 0; l < c.layers; l++) {
        shapes.push([U, G]);
        if (l > 0 || c.embedding) shapes.push([l > 0 ? U : c.embedding, G]);
      }
      const heap = new Heap(shapes.reduce((sum, [r, k]) => sum + pad16(k * pad16(r)) + 2 * pad16(k) + pad16(r), 0), wasm);
      this.engine = heap.simd ? "WebAssembly SIMD" : "JavaScript";
      this.embedding = c.embedding ? w["embedding/embeddings"] : null;
      this.layers = [];
      for (let l = 0; l < c.layers; l++) {
        const b = w[`rnn_${l}/bias`], oneHot = l === 0 && !c.embedding;
        const inputBias = c.cell === "gru" ? b.subarray(0, G) : b;  // GRU reset_after: bias [2, G]
        this.layers.push({
          oneHot, inputBias,
          input: oneHot ? w[`rnn_${l}/kernel`] : new Matrix(heap, w[`rnn_${l}/kernel`], l > 0 ? U : c.embedding, G, inputBias),
          recurrent: new Matrix(heap, w[`rnn_${l}/recurrent_kernel`], U, G, c.cell === "gru" ? b.subarray(G) : null),
          xw: new Float32Array(G),
        });
      }
      this.readout = new Matrix(heap, w["readout/kernel"], U, V, w["readout/bias"]);
    }

    static fromPage(doc = document, options = {}) {
      const manifest = JSON.parse(doc.getElementById("charrnn-model").textContent);
      const b64 = doc.getElementById("charrnn-weights").textContent.trim();
      return new Model(manifest, decodeBase64(b64), options);
    }

    static async load(url, options = {}) {
      const manifest = await (await fetch(url)).json();
      const bin = new URL(manifest.weightsManifest[0].paths[0], new URL(url, location.href));
      return new Model(manifest, new Uint8Array(await (await fetch(bin)).arrayBuffer()), options);
    }

    encode(text) {
      return Array.from(text, (ch) => (this.ids.has(ch) ? this.ids.get(ch) : this.unknown));
    }

    /* A zero state: per layer h (and c for the LSTM). */
    initialState() {
      const size = this.config.cell === "lstm" ? 2 * this.config.units : this.config.units;
      return this.layers.map(() => new Float32Array(size));
    }

    /* Read one id, update state in place; returns the logits [V] (overwritten by the next step). */
    step(state, id) {
      const c = this.config, U = c.units, G = GATES[c.cell] * U;
      let x = this.embedding ? this.embedding.subarray(id * c.embedding, (id + 1) * c.embedding) : null;
      this.layers.forEach((layer, l) => {
        let xw = layer.xw;
        if (layer.oneHot) {  // one_hot(id) @ kernel: a row of it
          for (let j = 0; j < G; j++) xw[j] = layer.input[id * G + j] + layer.inputBias[j];
        } else {
          xw = layer.input.apply(x);
        }
        const s = state[l], hw = layer.recurrent.apply(s.subarray(0, U));  // h: the first U of s
        if (c.cell === "gru") {  // Keras's GRU, reset_after=True: gates z, r, h
          for (let j = 0; j < U; j++) {
            const z = sigmoid(xw[j] + hw[j]), r = sigmoid(xw[U + j] + hw[U + j]);
            const hh = Math.tanh(xw[2 * U + j] + r * hw[2 * U + j]);
            s[j] = z * s[j] + (1 - z) * hh;
          }
        } else if (c.cell === "lstm") {  // gates i, f, c, o; s holds h then c
          for (let j = 0; j < U; j++) {
            const i = sigmoid(xw[j] + hw[j]), f = sigmoid(xw[U + j] + hw[U + j]);
            const g = Math.tanh(xw[2 * U + j] + hw[2 * U + j]), o = sigmoid(xw[3 * U + j] + hw[3 * U + j]);
            s[U + j] = f * s[U + j] + i * g;
            s[j] = o * Math.tanh(s[U + j]);
          }
        } else {
          for (let j = 0; j < U; j++) s[j] = Math.tanh(xw[j] + hw[j]);
        }
        x = s.subarray(0, U);
      });
      return this.readout.apply(x);
    }

    /* The next-character distribution after text (from a zero state), an Array [V];
     * with {each: true}, an Array of them, one after every character of text. */
    probabilities(text, {each = false} = {}) {
      const state = this.initialState(), all = [];
      let dist = null;
      for (const id of this.encode(text)) {
        const logits = this.step(state, id), top = Math.max(...logits);
        let total = 0;
        dist = Array.from(logits, (v) => { const e = Math.exp(v - top); total += e; return e; });
        dist = dist.map((e) => e / total);
        if (each) all.push(dist);
      }
      if (dist === null) throw new Error("probabilities needs a text of at least one character");
      return each ? all : dist;
    }

    /* The mean loss in nats/char of predicting each character of text from those before
     * it (the first is read, not predicted), from a zero state, as one sequence. */
    loss(text) {
      const ids = this.encode(text), state = this.initialState();
      if (ids.length < 2) throw new Error("loss needs a text of at least 2 characters");
      let total = 0;
      for (let t = 0; t + 1 < ids.length; t++) {
        const logits = this.step(state, ids[t]), top = Math.max(...logits);
        let sum = 0;
        for (const v of logits) sum += Math.exp(v - top);
        total += top + Math.log(sum) - logits[ids[t + 1]];
      }
      return total / (ids.length - 1);
    }

    /* Yield the generated characters one at a time (the prime excluded); length 0: no end. */
    *stream(options = {}) {
      const o = checkOptions(options), random = mulberry32(o.seed), state = this.initialState();
      const prime = this.encode(o.prime || "\n");
      let logits = null;
      for (const id of prime) logits = this.step(state, id);
      for (let n = 0; o.length === 0 || n < o.length; n++) {
        const id = pick(logits, o, random, this.unknown);
        yield this.vocabulary[id];
        logits = this.step(state, id);
      }
    }

    generate(options = {}) {
      const o = {length: 1000, ...options};
      if (o.length === 0) throw new Error("generate needs a length > 0; stream() has no end");
      let text = "";
      for (const ch of this.stream(o)) text += ch;
      return text;
    }
  }

  return {Model, fromPage: Model.fromPage, load: Model.load, checkOptions};
})();
