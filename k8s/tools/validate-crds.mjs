// Validates custom resources (a JSON array, from scripts/deploy/k8s_tool.py split)
// against the Prometheus Operator CRD schemas of @kubernetes-models/prometheus-operator:
// 1. each model's JSON-schema validation (types, patterns, required fields);
// 2. strictness: the objects as TypeScript literals of the package's interfaces,
//    so that tsc rejects any property the CRD does not define (a misspelt field
//    would otherwise be dropped by the API server without a word).
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const here = dirname(fileURLToPath(import.meta.url));
const [file] = process.argv.slice(2);
const docs = JSON.parse(readFileSync(file, "utf8"));
let failed = 0;
const lines = [];
docs.forEach((doc, i) => {
  const name = `${doc.kind}/${doc.metadata?.name}`;
  if (doc.apiVersion !== "monitoring.coreos.com/v1" || !(doc.kind in v1)) {
    console.error(`FAIL ${name}: no schema for ${doc.apiVersion} ${doc.kind}`);
    failed++;
    return;
  }
  try {
    new v1[doc.kind](doc).validate();
    console.log(`schema ok: ${name}`);
  } catch (e) {
    console.error(`FAIL ${name}: ${e.message}`);
    failed++;
  }
  lines.push(
    `import type { I${doc.kind} } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/${doc.kind}";`,
    `export const doc${i}: I${doc.kind} = ${JSON.stringify(doc)};`,
  );
});
if (lines.length) {
  const dir = mkdtempSync(join(here, ".check-"));
  const ts = join(dir, "resources.ts");
  writeFileSync(ts, lines.join("\n") + "\n");
  try {
    execFileSync(
      join(here, "node_modules/.bin/tsc"),
      ["--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext", "--moduleResolution", "nodenext", ts],
      { stdio: "inherit" },
    );
    console.log(`no unknown fields in ${lines.length / 2} custom resources`);
  } catch {
    console.error("FAIL: unknown or mistyped fields (above)");
    failed++;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
process.exit(failed ? 1 : 0);
