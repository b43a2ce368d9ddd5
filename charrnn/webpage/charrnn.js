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
 *   model.vocabulary, model.config, model.run        // what the page shows
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

  /* W [rows, cols] row-major -> its transpose [cols, rows], so each output is one contiguous dot product. */
  function transpose(w, rows, cols) {
    const t = new Float32Array(rows * cols);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = w[i * cols + j];
    return t;
  }

  /* out[j] = bias[j] + sum_i x[i] * W[i, j], with wt = transpose(W) [n, m]. */
  function matvec(out, wt, x, bias, n, m) {
    for (let j = 0; j < n; j++) {
      const row = j * m;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, i = 0;
      for (; i + 3 < m; i += 4) {
        s0 += x[i] * wt[row + i]; s1 += x[i + 1] * wt[row + i + 1];
        s2 += x[i + 2] * wt[row + i + 2]; s3 += x[i + 3] * wt[row + i + 3];
      }
      for (; i < m; i++) s0 += x[i] * wt[row + i];
      out[j] = bias[j] + (s0 + s1) + (s2 + s3);
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
    /* manifest: the parsed model.json; bytes: Uint8Array of weights.bin. */
    constructor(manifest, bytes) {
      const c = manifest.model;
      if (!(c.cell in GATES)) throw new Error(`unknown cell ${c.cell}`);
      this.config = c;
      this.run = manifest.run;
      this.vocabulary = manifest.vocabulary;
      this.unknown = manifest.unknown;
      this.ids = new Map(this.vocabulary.map((ch, i) => [ch, i]));
      const w = decodeWeights(manifest, bytes);
      const G = GATES[c.cell] * c.units, V = c.vocab_size;
      this.embedding = c.embedding ? w["embedding/embeddings"] : null;
      this.layers = [];
      for (let l = 0; l < c.layers; l++) {
        const inputs = l > 0 ? c.units : c.embedding || V, b = w[`rnn_${l}/bias`];
        const oneHot = l === 0 && !c.embedding;
        this.layers.push({
          inputs, oneHot,
          kernel: oneHot ? w[`rnn_${l}/kernel`] : transpose(w[`rnn_${l}/kernel`], inputs, G),
          recurrent: transpose(w[`rnn_${l}/recurrent_kernel`], c.units, G),
          inputBias: c.cell === "gru" ? b.subarray(0, G) : b,
          recurrentBias: c.cell === "gru" ? b.subarray(G) : new Float32Array(G),
        });
      }
      this.readout = transpose(w["readout/kernel"], c.units, V);
      this.readoutBias = w["readout/bias"];
      this.xw = new Float32Array(G);
      this.hw = new Float32Array(G);
      this.logits = new Float32Array(V);
    }

    static fromPage(doc = document) {
      const manifest = JSON.parse(doc.getElementById("charrnn-model").textContent);
      const b64 = doc.getElementById("charrnn-weights").textContent.trim();
      return new Model(manifest, Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0)));
    }

    static async load(url) {
      const manifest = await (await fetch(url)).json();
      const bin = new URL(manifest.weightsManifest[0].paths[0], new URL(url, location.href));
      return new Model(manifest, new Uint8Array(await (await fetch(bin)).arrayBuffer()));
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
      const c = this.config, U = c.units, G = GATES[c.cell] * U, xw = this.xw, hw = this.hw;
      let x = this.embedding ? this.embedding.subarray(id * c.embedding, (id + 1) * c.embedding) : null;
      this.layers.forEach((layer, l) => {
        if (layer.oneHot) {
          for (let j = 0; j < G; j++) xw[j] = layer.kernel[id * G + j] + layer.inputBias[j];
        } else {
          matvec(xw, layer.kernel, x, layer.inputBias, G, layer.inputs);
        }
        const s = state[l];
        matvec(hw, layer.recurrent, s, layer.recurrentBias, G, U);  // reads h, the first U of s
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
      matvec(this.logits, this.readout, x, this.readoutBias, c.vocab_size, U);
      return this.logits;
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
