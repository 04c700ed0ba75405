// Lint config: typescript-eslint's recommended type-aware rules over our sources, and the
// import layering of DESIGN.md §3 (imports point down only; no circles).
import tseslint from 'typescript-eslint';
import { importX } from 'eslint-plugin-import-x';

// Each layer under src/ and the layers it must not import. net/ and log.ts are leaves
// every layer may use; devcluster/ and cli/ sit on top.
//   runtime <- api <- probes <- operator;  runtime <- api <- agent
const layers = {
  net: ['runtime', 'api', 'probes', 'operator', 'agent', 'devcluster', 'cli'],
  runtime: ['api', 'probes', 'operator', 'agent', 'devcluster', 'cli'],
  api: ['probes', 'operator', 'agent', 'devcluster', 'cli'],
  probes: ['operator', 'agent', 'devcluster', 'cli'],
  operator: ['agent', 'devcluster', 'cli'],
  agent: ['probes', 'operator', 'devcluster', 'cli'],
  devcluster: ['cli'],
};
const zones = [
  { target: './src/log.ts', from: './src', except: ['./log.ts'], message: 'log.ts is a leaf: it imports nothing of ours.' },
  ...Object.entries(layers).flatMap(([layer, above]) =>
    above.map((other) => ({ target: `./src/${layer}`, from: `./src/${other}`, message: `src/${layer} must not import src/${other} (DESIGN.md §3 layering).` })),
  ),
];

export default tseslint.config(
  { ignores: ['node_modules/**', '.cluster/**', 'controlplane/**'] },
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: { allowDefaultProject: ['*.js', 'bin/*.js', 'scripts/*.js', 'test/guest/*.mjs'] }, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/**/*.ts'],
    plugins: { 'import-x': importX },
    settings: {
      // Our imports name the .ts file itself, so Node's resolution finds it; the parser reads it for no-cycle.
      'import-x/resolver-next': [importX.createNodeResolver({ extensions: ['.ts', '.js'] })],
      'import-x/extensions': ['.ts', '.js'],
      'import-x/parsers': { '@typescript-eslint/parser': ['.ts'] },
    },
    rules: {
      'import-x/no-cycle': ['error', { ignoreExternal: true }],
      'import-x/no-restricted-paths': ['error', { zones }],
    },
  },
);
