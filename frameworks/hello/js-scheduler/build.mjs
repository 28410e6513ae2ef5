// Builds hello.js into a component: `node build.mjs OUT.wasm`.
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';

const source = await readFile(new URL('hello.js', import.meta.url), 'utf8');
const { component } = await componentize(source, {
  witPath: new URL('wit', import.meta.url).pathname,
  worldName: 'hello-js',
  // A scheduler has no use for HTTP; without this the component imports
  // wasi:http, which no Stoa host provides.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(process.argv[2] ?? 'hello_js.wasm', component);
