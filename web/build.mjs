// Bundles the library into one ES module, dist/ephemeralml.js, and the page that
// `ephemeral web` serves (page/app.js with the library inside it, index.html,
// style.css) into dist/. No CDN and no network at run time: every dependency is
// inside the files.
import { build } from 'esbuild'
import { copyFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'

const here = fileURLToPath(new URL('.', import.meta.url))

const common = {
  bundle: true,
  format: 'esm',
  platform: 'browser',
  // Web Crypto Ed25519 arrived in Chromium 137; the syntax target is far older.
  target: ['es2022'],
  minify: false,
  sourcemap: false,
  legalComments: 'eof',
  logLevel: 'warning',
  metafile: false
}
await build({ ...common, entryPoints: [`${here}src/index.js`], outfile: `${here}dist/ephemeralml.js` })
await build({ ...common, entryPoints: [`${here}page/app.js`], outfile: `${here}dist/app.js` })
for (const name of ['index.html', 'style.css']) await copyFile(`${here}page/${name}`, `${here}dist/${name}`)
