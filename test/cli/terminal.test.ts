// A guest's bytes reach the operator's terminal defanged: no escape sequence survives.
import assert from "node:assert/strict";
import { test } from "node:test";
import { printable, PrintableStream } from "../../cli/terminal.js";

test("escape sequences, C1 controls and lone CRs are made visible; newline, tab and CRLF pass", () => {
  const evil = "ok\r\n\x1b]0;pwned\x07\x1b[2J\tcol\rover\u009b31m\x7f";
  assert.equal(printable(evil), "ok\n\\x1b]0;pwned\\x07\\x1b[2J\tcol\\x0dover\\x9b31m\\x7f");
  // biome-ignore lint/suspicious/noControlCharactersInRegex: no control character may be left
  assert.doesNotMatch(printable(evil), /[\x00-\x08\x0b-\x1f\x7f-\x9f]/);
});

test("the stream keeps UTF-8 and CRLF whole across chunk boundaries", () => {
  const stream = new PrintableStream();
  const bytes = Buffer.from("é line\r\nnext\x1b[0m");
  let out = "";
  out += stream.write(bytes.subarray(0, 1)); // half of é
  out += stream.write(bytes.subarray(1, 8)); // ends with CR
  out += stream.write(bytes.subarray(8));
  out += stream.end();
  assert.equal(out, "é line\nnext\\x1b[0m");
});
