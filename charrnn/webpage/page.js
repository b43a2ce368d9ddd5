
/* The page: fills in what it shows about the run (as text, never as markup) and
 * runs Generate / Stop through the API above. window.model is the model. */
(() => {
  const $ = (id) => document.getElementById(id);
  const model = CharRNN.fromPage();
  window.model = model;
  const c = model.config, run = model.run || {};

  // A character shown in the vocabulary: control, space-like and line-breaking ones by name.
  const named = {"\n": "\u21b5", "\t": "\u21e5", " ": "\u2423"};
  const show = (ch, i) => i === model.unknown ? "(unknown)" : named[ch]
    || (/[\p{C}\p{Z}]/u.test(ch) ? `U+${ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}` : ch);
  document.title = `${run.name || "Character RNN"}: character RNN`;
  $("title").textContent = run.name || "Character RNN";
  $("run-name").textContent = run.name || "";
  $("run-checkpoint").textContent = `${run.checkpoint || ""} (step ${run.step})`;
  $("run-model").textContent = `${c.cell.toUpperCase()} ${c.layers}\u00d7${c.units}, ` +
    `${c.embedding ? `embedding ${c.embedding}` : "one-hot input"}, ${c.parameters.toLocaleString("en")} weights`;
  $("run-loss").textContent = run.best_validation_loss == null ? "not validated"
    : `${run.best_validation_loss.toFixed(4)} nats/char (${(run.best_validation_loss / Math.LN2).toFixed(4)} bits/char)`;
  $("vocabulary").textContent = `${model.vocabulary.length} symbols: ` + model.vocabulary.map(show).join(" ");

  // The options given to rnn_play.py --export-web start the form (as values, never as markup).
  const given = (key) => Object.prototype.hasOwnProperty.call(model.sampling, key);
  const inputs = {prime: "prime", length: "length", temperature: "temperature", topK: "top-k", topP: "top-p", seed: "seed"};
  for (const [key, id] of Object.entries(inputs)) if (given(key)) $(id).value = String(model.sampling[key]);
  if (given("argmax")) $("argmax").checked = model.sampling.argmax === true;

  let running = null;  // the stream being shown, until it ends or Stop
  function options() {
    const number = (id) => Number($(id).value);
    return {prime: $("prime").value, length: number("length"), temperature: number("temperature"),
            topK: number("top-k"), topP: number("top-p"), argmax: $("argmax").checked,
            seed: $("seed").value === "" ? null : number("seed")};
  }
  function finish(message) {
    running = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
    $("status").textContent = message;
  }
  $("generate").addEventListener("click", () => {
    let o;
    try { o = CharRNN.checkOptions(options()); } catch (e) { finish(e.message); return; }
    const out = $("output"), stream = model.stream(o), started = performance.now();
    out.textContent = o.prime;
    running = stream;
    $("generate").disabled = true;
    $("stop").disabled = false;
    let made = 0;
    const chunk = () => {  // characters for about one frame, then let the page draw them
      if (running !== stream) return;
      const text = [], until = performance.now() + 16;
      for (let r; performance.now() < until && !(r = stream.next()).done;) text.push(r.value);
      if (made === 0 && text.length) window.firstCharacterMs = performance.now() - started;
      made += text.length;
      out.append(text.join(""));
      const seconds = (performance.now() - started) / 1000;
      if (o.length && made >= o.length) finish(`${made} characters in ${seconds.toFixed(2)} s, seed ${o.seed}`);
      else { $("status").textContent = `${made} characters\u2026 seed ${o.seed}`; setTimeout(chunk, 0); }
    };
    setTimeout(chunk, 0);
  });
  $("stop").addEventListener("click", () => finish(`stopped after ${$("output").textContent.length} characters of text`));
  window.pageReadyMs = performance.now();
})();
