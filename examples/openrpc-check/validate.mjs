// Independent checks of nbio-ws's OpenRPC documents, with ajv (JSON Schema
// draft 7, the dialect of OpenRPC 1.3):
//
//   node validate.mjs document DOC.json...
//     each document against the official OpenRPC meta-schema
//     (@open-rpc/meta-schema, whose JSON Schema parts are
//     @json-schema-tools/meta-schema), and every schema in it compiled as
//     draft 7 with `$ref`s resolved in the document;
//
//   node validate.mjs values DOC.json CASES.json
//     CASES is [{"label": "...", "schema": {...}, "value": ...}]: each value
//     against its schema, `#/components/schemas/...` refs resolved in DOC.
//
// Exits 1 on the first document that fails, or after all values with a
// count of those that failed.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import Ajv from "ajv";
import addFormats from "ajv-formats";

const require = createRequire(import.meta.url);
const openrpcMeta = require("@open-rpc/meta-schema").default;
const jsonSchemaMeta = require("@json-schema-tools/meta-schema").default;

function newAjv() {
  const ajv = new Ajv({ allErrors: true, strict: false });
  addFormats(ajv);
  // The numeric formats schemars writes (`"format": "uint8"`...): checked
  // as integer ranges, or as any number for floats.
  const ranges = {
    int8: [-(2 ** 7), 2 ** 7 - 1],
    int16: [-(2 ** 15), 2 ** 15 - 1],
    int32: [-(2 ** 31), 2 ** 31 - 1],
    int64: [-(2 ** 63), 2 ** 63],
    uint8: [0, 2 ** 8 - 1],
    uint16: [0, 2 ** 16 - 1],
    uint32: [0, 2 ** 32 - 1],
    uint64: [0, 2 ** 64],
    uint: [0, 2 ** 64],
    int: [-(2 ** 63), 2 ** 63],
  };
  for (const [name, [lo, hi]] of Object.entries(ranges)) {
    ajv.addFormat(name, { type: "number", validate: (x) => Number.isInteger(x) && x >= lo && x <= hi });
  }
  for (const name of ["float", "double"]) {
    ajv.addFormat(name, { type: "number", validate: () => true });
  }
  return ajv;
}

const read = (path) => JSON.parse(readFileSync(path, "utf8"));

/// Every JSON Schema of a document, with where it is.
function schemasOf(doc) {
  const out = [];
  for (const [name, s] of Object.entries(doc.components?.schemas ?? {})) {
    out.push([`components.schemas.${name}`, s]);
  }
  const describe = (kind, m) => {
    for (const p of m.params ?? []) out.push([`${kind} ${m.name} param ${p.name}`, p.schema]);
    if (m.result) out.push([`${kind} ${m.name} result`, m.result.schema]);
    if ("x-params-schema" in m) out.push([`${kind} ${m.name} x-params-schema`, m["x-params-schema"]]);
  };
  for (const m of doc.methods ?? []) describe("method", m);
  for (const n of doc["x-notifications"] ?? []) describe("notification", n);
  return out;
}

/// A schema whose `#/components/...` refs resolve in `doc`.
function inDocument(doc, schema, id) {
  return { $id: id, components: doc.components ?? {}, allOf: [schema] };
}

function checkDocument(path) {
  const doc = read(path);
  const ajv = newAjv();
  // The JSON Schema meta-schema OpenRPC refers to, under both spellings of
  // its id.
  const { $schema: _ignored, ...jsonSchema } = jsonSchemaMeta;
  ajv.addMetaSchema({ ...jsonSchema, $id: "https://meta.json-schema.tools/" });
  ajv.addMetaSchema({ ...jsonSchema, $id: "https://meta.json-schema.tools" });
  const { $schema: _also, ...openrpc } = openrpcMeta;
  const validate = ajv.compile(openrpc);
  if (!validate(doc)) {
    console.error(`${path}: NOT a valid OpenRPC document:`);
    for (const e of validate.errors) console.error(`  ${e.instancePath || "/"}: ${e.message} ${JSON.stringify(e.params)}`);
    process.exit(1);
  }
  // Each schema is valid draft 7 and its refs resolve.
  let n = 0;
  for (const [where, schema] of schemasOf(doc)) {
    try {
      newAjv().compile(inDocument(doc, schema, `urn:nbio-ws:check:${n++}`));
    } catch (e) {
      console.error(`${path}: ${where}: not a usable draft-7 schema: ${e.message}`);
      process.exit(1);
    }
  }
  const size = readFileSync(path).length;
  console.log(
    `${path}: valid OpenRPC ${doc.openrpc} against @open-rpc/meta-schema ${require("@open-rpc/meta-schema/package.json").version}: ` +
      `${doc.methods.length} methods, ${(doc["x-notifications"] ?? []).length} notifications, ` +
      `${Object.keys(doc.components?.schemas ?? {}).length} component schemas, ${n} schemas compiled, ${size} bytes`,
  );
}

function checkValues(docPath, casesPath) {
  const doc = read(docPath);
  const cases = read(casesPath);
  const ajv = newAjv();
  let failed = 0;
  cases.forEach((c, i) => {
    const validate = ajv.compile(inDocument(doc, c.schema, `urn:nbio-ws:value:${i}`));
    if (validate(c.value)) {
      console.log(`ok: ${c.label}`);
    } else {
      failed++;
      console.error(`FAILED: ${c.label}: ${JSON.stringify(c.value)}`);
      for (const e of validate.errors) console.error(`  ${e.instancePath || "/"}: ${e.message} ${JSON.stringify(e.params)}`);
    }
  });
  console.log(`values: ${cases.length - failed} passed, ${failed} failed`);
  if (failed > 0) process.exit(1);
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "document" && args.length > 0) {
  args.forEach(checkDocument);
} else if (mode === "values" && args.length === 2) {
  checkValues(args[0], args[1]);
} else {
  console.error("usage: node validate.mjs document DOC.json... | values DOC.json CASES.json");
  process.exit(2);
}
