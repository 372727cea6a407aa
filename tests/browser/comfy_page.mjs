// Drive ComfyUI's own web page in headless Chromium (playwright-core) against a running ComfyUI
// with InvEdit installed. Started by tests/browser/comfy_browser.py, which starts the server,
// passes a JSON job as the only argument and reads back <out>/result.json:
//
//   node tests/browser/comfy_page.mjs '{"url": ..., "out": ..., "chromium": ..., "playwright": ...,
//                                       "pack_module": "invedit", "pack_nodes": [...],
//                                       "self_explaining_types": [...], "workflows": {name: node count},
//                                       "run_workflow": "testbed_ddim_reconstruction", "run_focus_type": ...,
//                                       "tooltip_node": ..., "tooltip_widget": ..., "tooltip_input": ...}'
//
// Every check records what it saw in result.json (the Python test asserts on it); screenshots go
// to <out>/raw/. The page is read through what the frontend (comfyui-frontend-package 1.27.10)
// exposes on window: app, LiteGraph, comfyAPI.api.api. A step that throws is recorded in
// result.errors with a screenshot, and the script goes on with the next step.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const job = JSON.parse(process.argv[2]);
const require = createRequire(path.join(job.playwright, 'package.json'));
const { chromium } = require('playwright-core');

const RAW = path.join(job.out, 'raw');
fs.mkdirSync(path.join(RAW, 'nodes'), { recursive: true });
fs.mkdirSync(path.join(RAW, 'workflows'), { recursive: true });
fs.mkdirSync(path.join(RAW, 'thumbnails'), { recursive: true });
const VIEWPORT = { width: 1600, height: 1000 };
const result = { steps: {}, errors: [], console_errors: [], http_errors: [], timings: {} };
let currentStep = 'start';
const started = Date.now();
const log = (...args) => console.error(`[page ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
const save = () => fs.writeFileSync(path.join(job.out, 'result.json'), JSON.stringify(result, null, 1));

const browser = await chromium.launch({
  executablePath: job.chromium,
  headless: true,
  // As root Chromium needs --no-sandbox; the others keep it off the (closed) network.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: VIEWPORT, deviceScaleFactor: 1 });
const page = await context.newPage();
page.setDefaultTimeout(20000);
page.on('console', (msg) => {
  if (msg.type() === 'error') result.console_errors.push(`${currentStep}: ${msg.text().slice(0, 500)}`);
});
page.on('response', (response) => {
  if (response.status() >= 400) result.http_errors.push(`${currentStep}: ${response.status()} ${response.url()}`);
});
page.on('pageerror', (error) => result.console_errors.push(`${currentStep}: pageerror: ${String(error.stack || error).slice(0, 800)}`));

async function step(name, fn) {
  const t0 = Date.now();
  currentStep = name;
  log(`${name} ...`);
  try {
    result.steps[name] = await fn();
  } catch (error) {
    result.errors.push({ step: name, error: String(error.stack || error).slice(0, 3000) });
    log(`${name} FAILED: ${String(error).split('\n')[0]}`);
    await page.screenshot({ path: path.join(RAW, `error_${name}.png`) }).catch(() => {});
    await closeDialogs().catch(() => {});
  }
  result.timings[name] = (Date.now() - t0) / 1000;
  save();
}

// Dialogs open now, by the key the frontend gives them (aria-labelledby of PrimeVue's dialog).
const openDialogs = () => page.evaluate(() =>
  [...document.querySelectorAll('.p-dialog')].map((d) => d.getAttribute('aria-labelledby') || d.className));

async function closeDialogs() {
  for (let i = 0; i < 6 && (await page.locator('.p-dialog').count()) > 0; i++) {
    await page.keyboard.press('Escape');
    await page.waitForTimeout(100);
    const close = page.locator('.p-dialog .p-dialog-close-button').last();
    if ((await page.locator('.p-dialog').count()) > 0 && await close.count()) {
      await close.click({ timeout: 2000 }).catch(() => {});
    }
  }
}

const command = (id) => page.evaluate((id) => window.app.extensionManager.command.execute(id), id);
const setFocusMode = (on) => page.evaluate((on) => { window.app.extensionManager.focusMode = on; }, on);
const nextFrames = () => page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));

async function redraw() {
  await page.evaluate(() => { window.app.canvas.setDirty(true, true); window.app.canvas.draw(true, true); });
  await nextFrames();
}

// Graph-space rectangle -> page pixels (deviceScaleFactor 1).
function toPage(rect) {
  return page.evaluate(([x, y, w, h]) => {
    const { ds, canvas } = window.app.canvas;
    const box = canvas.getBoundingClientRect();
    const [px, py] = ds.convertOffsetToCanvas([x, y]);
    return { x: box.left + px, y: box.top + py, width: w * ds.scale, height: h * ds.scale };
  }, rect);
}

// Fit the graph into a rectangle of the page (default: the window), as "Fit view" does with a
// smaller margin; returns the fitted nodes' rectangle on the page.
async function fitGraph({ zoom = 0.92, area = null, fromType = null } = {}) {
  const rect = await page.evaluate(({ zoom, area, fromType }) => {
    const { app } = window;
    // fromType: only the nodes from the first node of that type rightwards.
    const first = fromType && app.graph.nodes.find((n) => n.type === fromType);
    const nodes = first ? app.graph.nodes.filter((n) => n.pos[0] >= first.pos[0]) : app.graph.nodes;
    if (!nodes.length) return null;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of nodes) {
      const [x, y, w, h] = Array.from(node.getBounding());
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
    }
    const box = app.canvas.canvas.getBoundingClientRect();
    const target = area || { x: box.left, y: box.top, width: box.width, height: box.height };
    const scale = Math.min(zoom * target.width / (x1 - x0), zoom * target.height / (y1 - y0), 2);
    const cx = target.x - box.left + target.width / 2;
    const cy = target.y - box.top + target.height / 2;
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [cx / scale - (x0 + x1) / 2, cy / scale - (y0 + y1) / 2];
    app.canvas.setDirty(true, true);
    return [x0, y0, x1 - x0, y1 - y0];
  }, { zoom, area, fromType });
  await redraw();
  return rect && toPage(rect);
}

// For a graph wider than maxAspect: a view of that aspect across the window, the graph's full
// height, centred on the pack's nodes (clamped to the graph); returns its rectangle on the page.
function thumbnailView(maxAspect) {
  return page.evaluate(({ maxAspect, width, height }) => {
    const { app } = window;
    const bounds = (nodes) => {
      let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
      for (const node of nodes) {
        const [x, y, w, h] = Array.from(node.getBounding());
        x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
      }
      return [x0, y0, x1, y1];
    };
    const [x0, y0, x1, y1] = bounds(app.graph.nodes);
    if ((x1 - x0) / (y1 - y0) <= maxAspect) return null;
    const areaH = Math.round(width / maxAspect), top = Math.round((height - areaH) / 2);
    const scale = Math.min(0.96 * areaH / (y1 - y0), 2);
    const halfW = width / scale / 2;
    const pack = app.graph.nodes.filter((n) => n.type?.startsWith('InvEdit'));
    const [p0, , p1] = pack.length ? bounds(pack) : [x0, 0, x1];
    const cx = Math.min(Math.max((p0 + p1) / 2, x0 - 10 + halfW), x1 + 10 - halfW);
    const box = app.canvas.canvas.getBoundingClientRect();
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [(width / 2 - box.left) / scale - cx, (top + areaH / 2 - box.top) / scale - (y0 + y1) / 2];
    app.canvas.setDirty(true, true);
    return { x: 0, y: top, width, height: areaH };
  }, { maxAspect, ...VIEWPORT });
}

// Widen (or narrow) the open sidebar by dragging its splitter.
async function dragGutter(dx) {
  const gutter = page.locator('.p-splitter-gutter').first();
  if (!(await gutter.count())) return;
  const g = await gutter.boundingBox();
  await page.mouse.move(g.x + g.width / 2, g.y + g.height / 2);
  await page.mouse.down();
  await page.mouse.move(g.x + g.width / 2 + dx, g.y + g.height / 2, { steps: 5 });
  await page.mouse.up();
}

// Park the mouse where it raises no tooltip.
const parkMouse = () => page.mouse.move(VIEWPORT.width / 2, 2);

// ---------------------------------------------------------------------------------------------

await step('open_page', async () => {
  await page.goto(job.url, { waitUntil: 'load', timeout: 60000 });
  await page.waitForFunction(
    (ids) => window.app?.graph && window.LiteGraph && ids.every((id) => id in window.LiteGraph.registered_node_types),
    job.pack_nodes, { timeout: 60000 });
  await page.locator('[data-testid="queue-button"]').waitFor({ timeout: 30000 });
  await closeDialogs();
  // Start from an empty canvas, with no graph restored from an earlier session.
  await page.evaluate(() => window.app.graph.clear());
  return { title: await page.title() };
});

// What the page received for each node of the pack (the node definitions from /object_info).
await step('node_definitions', () => page.evaluate(({ ids, selfExplaining }) => {
  const out = {};
  for (const id of ids) {
    const ctor = window.LiteGraph.registered_node_types[id];
    if (!ctor) { out[id] = { registered: false }; continue; }
    const def = ctor.nodeData || {};
    const inputs = {};
    for (const section of ['required', 'optional']) {
      for (const [name, spec] of Object.entries(def.input?.[section] || {})) {
        const type = Array.isArray(spec[0]) ? 'COMBO' : spec[0];
        inputs[name] = { type, tooltip: spec[1]?.tooltip || '', self_explaining: selfExplaining.includes(type) };
      }
    }
    out[id] = {
      registered: true, display_name: def.display_name, category: def.category,
      python_module: def.python_module, description: def.description || '', inputs,
      outputs: def.output || [], output_tooltips: def.output_tooltips || [],
    };
  }
  return out;
}, { ids: job.pack_nodes, selfExplaining: job.self_explaining_types }));

const displayNames = Object.fromEntries(job.pack_nodes.map(
  (id) => [id, result.steps.node_definitions?.[id]?.display_name || id]));

// The node library sidebar: search each node by its display name, find its leaf.
await step('node_library', async () => {
  await page.locator('.node-library-tab-button').click();
  const search = page.locator('.side-bar-panel').getByPlaceholder(/search/i).first();
  await search.waitFor();
  const found = {};
  for (const id of job.pack_nodes) {
    const name = displayNames[id];
    await search.fill(name);
    found[id] = await page.waitForFunction((name) =>
      [...document.querySelectorAll('.side-bar-panel .tree-leaf .node-label')].some((e) => e.textContent.trim() === name),
    name, { timeout: 5000 }).then(() => true, () => false);
  }
  // The picture: the library searched for the pack, wider, with one node's preview on hover.
  await search.fill('InvEdit');
  await page.waitForTimeout(600);
  await dragGutter(180);
  const leaf = page.locator('.side-bar-panel .tree-leaf', { hasText: displayNames[job.tooltip_node] }).first();
  await leaf.hover();
  const preview = page.locator('.node-lib-node-preview');
  const previewShown = await preview.waitFor({ timeout: 5000 }).then(() => true, () => false);
  const previewText = previewShown ? await preview.innerText() : '';
  await page.waitForTimeout(300);
  // Crop to the sidebar and the preview beside it.
  const right = await page.evaluate(() => Math.max(...['.side-bar-panel', '.node-lib-node-preview']
    .map((s) => document.querySelector(s)?.getBoundingClientRect().right || 0)));
  await page.screenshot({ path: path.join(RAW, 'node_library.png'),
    clip: { x: 0, y: 0, width: Math.min(VIEWPORT.width, right + 24), height: VIEWPORT.height } });
  const leaves = await page.evaluate(() =>
    [...document.querySelectorAll('.side-bar-panel .tree-leaf .node-label')].map((e) => e.textContent.trim()));
  await search.fill('');
  await dragGutter(-180);
  await page.locator('.node-library-tab-button').click(); // close the sidebar again
  return { found, leaves_for_InvEdit: leaves, preview_shown: previewShown, preview_text: previewText };
});

// One node on the canvas: hover a widget and an input socket, read the tooltip the page shows.
await step('canvas_tooltips', async () => {
  await page.evaluate((type) => {
    const { app, LiteGraph } = window;
    app.graph.clear();
    const node = LiteGraph.createNode(type);
    node.pos = [120, 140];
    app.graph.add(node);
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [0, 0];
  }, job.tooltip_node);
  await redraw();
  const hover = async (where) => {
    const point = await page.evaluate(({ kind, name }) => {
      const node = window.app.graph.nodes[0];
      if (kind === 'widget') {
        const widget = node.widgets.find((w) => w.name === name);
        return [node.pos[0] + node.size[0] / 2, node.pos[1] + (widget.last_y ?? widget.y) + 10];
      }
      const slot = node.inputs.findIndex((i) => i.name === name);
      return node.getInputPos(slot);
    }, where);
    const box = await toPage([point[0], point[1], 0, 0]);
    await page.mouse.move(box.x - 40, box.y - 40);
    await page.mouse.move(box.x, box.y, { steps: 4 });
    const tip = page.locator('.node-tooltip');
    const shown = await tip.waitFor({ timeout: 5000 }).then(() => true, () => false);
    const text = shown ? (await tip.innerText()).trim() : '';
    return { shown, text };
  };
  const widget = await hover({ kind: 'widget', name: job.tooltip_widget });
  await page.screenshot({ path: path.join(RAW, 'tooltip_widget.png') });
  const input = await hover({ kind: 'input', name: job.tooltip_input });
  await parkMouse();
  return { node: job.tooltip_node, widget: { name: job.tooltip_widget, ...widget }, input: { name: job.tooltip_input, ...input } };
});

// Each node of the pack alone on the canvas at zoom 1, cropped to its outline.
await step('node_pictures', async () => {
  const shots = {};
  await setFocusMode(true);
  for (const id of job.pack_nodes) {
    await page.evaluate((type) => {
      const { app, LiteGraph } = window;
      app.graph.clear();
      const node = LiteGraph.createNode(type);
      node.pos = [140, 120];
      app.graph.add(node);
      app.canvas.deselectAll?.();
      app.canvas.ds.scale = 1;
      app.canvas.ds.offset = [0, 0];
    }, id);
    await redraw();
    // The node's outline (title included) is known once it was drawn.
    const rect = await page.evaluate(() => Array.from(window.app.graph.nodes[0].getBounding()));
    const box = await toPage(rect);
    const pad = 10;
    const clip = { x: box.x - pad, y: box.y - pad, width: box.width + 2 * pad, height: box.height + 2 * pad };
    const file = path.join(RAW, 'nodes', `${id}.png`);
    await page.screenshot({ path: file, clip });
    shots[id] = { file, width: clip.width, height: clip.height };
  }
  await setFocusMode(false);
  await page.evaluate(() => window.app.graph.clear());
  return shots;
});

// Every workflow of the pack, opened from ComfyUI's template browser as a user does.
await step('templates_listed', async () => {
  const listed = await page.evaluate(async (module) => {
    const list = await (await fetch('/api/workflow_templates')).json();
    const names = list[module] || [];
    const thumbnails = {};
    for (const name of names) {
      const res = await fetch(`/api/workflow_templates/${module}/${encodeURIComponent(name)}.jpg`);
      thumbnails[name] = { status: res.status, type: res.headers.get('content-type') };
    }
    return { names, thumbnails };
  }, job.pack_module);
  // The picture: the template browser on the pack's category.
  await command('Comfy.BrowseTemplates');
  const dialog = page.locator('.p-dialog[aria-labelledby="global-template-workflows"]');
  await dialog.waitFor();
  await dialog.getByText(job.pack_module, { exact: true }).first().click();
  await page.waitForTimeout(1500);
  await parkMouse();
  await page.screenshot({ path: path.join(RAW, 'templates.png') });
  await closeDialogs();
  return listed;
});

async function openTemplate(name) {
  await closeDialogs();
  await command('Comfy.BrowseTemplates');
  const dialog = page.locator('.p-dialog[aria-labelledby="global-template-workflows"]');
  await dialog.waitFor();
  await dialog.getByText(job.pack_module, { exact: true }).first().click();
  // The grid shows a page of cards at a time: search for the one wanted.
  await dialog.getByPlaceholder(/search templates/i).fill(name);
  const card = dialog.locator(`[data-testid="template-workflow-${name}"]`);
  await card.waitFor();
  await card.scrollIntoViewIfNeeded();
  let thumbnailShown = false;
  if (result.steps.templates_listed?.thumbnails?.[name]?.status === 200) {
    const img = await card.locator('img').first().elementHandle({ timeout: 5000 }).catch(() => null);
    thumbnailShown = img !== null && await page.waitForFunction(
      (el) => el.complete && el.naturalWidth > 0, img, { timeout: 5000 }) // src: a blob of the fetched .jpg
      .then(() => true, () => false);
  }
  await card.click();
  await dialog.waitFor({ state: 'detached' });
  return thumbnailShown;
}

await step('workflows', async () => {
  const out = {};
  for (const [name, nodeCount] of Object.entries(job.workflows)) {
    const entry = (out[name] = {});
    const t0 = Date.now();
    try {
      entry.thumbnail_shown = await openTemplate(name);
      entry.opened_s = (Date.now() - t0) / 1000;
      await page.waitForFunction((n) => window.app.graph.nodes.length === n, nodeCount, { timeout: 10000 })
        .catch(() => {});
      await page.waitForTimeout(400); // warnings open right after loadGraphData
      entry.dialogs = await openDialogs();
      entry.missing_nodes_dialog = entry.dialogs.includes('global-load-workflow-warning');
      if (entry.missing_nodes_dialog) {
        entry.missing_nodes_text = await page.locator('.p-dialog[aria-labelledby="global-load-workflow-warning"]').innerText();
      }
      Object.assign(entry, await page.evaluate(() => {
        const nodes = window.app.graph.nodes;
        return {
          node_count: nodes.length,
          unregistered: nodes.filter((n) => !(n.type in window.LiteGraph.registered_node_types)).map((n) => n.type),
          with_errors: nodes.filter((n) => n.has_errors).map((n) => n.type || n.last_serialization?.type),
          types: [...new Set(nodes.map((n) => n.type))],
        };
      }));
      await closeDialogs();
      // The pictures, the UI hidden: the whole graph fitted into the window, and the thumbnail
      // (the same, or for a graph wider than 2:1 a 2:1 view around the pack's nodes).
      await setFocusMode(true);
      await parkMouse();
      const rect = await fitGraph({ zoom: 0.96 });
      await page.waitForTimeout(300);
      entry.screenshot = path.join(RAW, 'workflows', `${name}.png`);
      const margin = 12;
      const x = Math.max(0, rect.x - margin), y = Math.max(0, rect.y - margin);
      await page.screenshot({ path: entry.screenshot, clip: {
        x, y, width: Math.min(VIEWPORT.width - x, rect.width + 2 * margin),
        height: Math.min(VIEWPORT.height - y, rect.height + 2 * margin) } });
      const view = await thumbnailView(2);
      if (view) {
        await redraw();
        await page.waitForTimeout(300);
        entry.thumbnail_screenshot = path.join(RAW, 'thumbnails', `${name}.png`);
        await page.screenshot({ path: entry.thumbnail_screenshot, clip: view });
      } else {
        entry.thumbnail_screenshot = entry.screenshot;
      }
      entry.seconds = (Date.now() - t0) / 1000;
    } catch (error) {
      entry.error = String(error.stack || error).slice(0, 2000);
      await page.screenshot({ path: path.join(RAW, `error_workflow_${name}.png`) }).catch(() => {});
    } finally {
      await setFocusMode(false);
    }
  }
  return out;
});

// A negative control: a graph with an unknown node type must raise the missing-nodes warning, or the
// check above proves nothing.
await step('missing_node_control', async () => {
  await closeDialogs();
  await page.evaluate(() => window.app.loadGraphData({
    last_node_id: 1, last_link_id: 0, links: [], groups: [], config: {}, extra: {}, version: 0.4,
    nodes: [{ id: 1, type: 'InvEditNoSuchNode', pos: [0, 0], size: [200, 60], flags: {}, order: 0, mode: 0, properties: {} }],
  }));
  await page.waitForTimeout(400);
  const dialogs = await openDialogs();
  const detected = dialogs.includes('global-load-workflow-warning');
  await closeDialogs();
  return { detected, dialogs };
});

// Queue the test-bed workflow from the page (the Run button) and wait for the run to finish.
await step('queue_run', async () => {
  await openTemplate(job.run_workflow);
  await closeDialogs();
  await page.evaluate(() => {
    const api = window.comfyAPI.api.api;
    window.__invedit = { events: [], executed: {} };
    for (const type of ['execution_start', 'execution_success', 'execution_error', 'execution_interrupted']) {
      api.addEventListener(type, (e) => window.__invedit.events.push({ type, detail: e.detail }));
    }
    api.addEventListener('executed', (e) => { window.__invedit.executed[e.detail.node] = e.detail.output; });
  });
  const t0 = Date.now();
  await page.locator('[data-testid="queue-button"]').click();
  await parkMouse();
  await page.waitForFunction(() => window.__invedit.events.some((e) => e.type !== 'execution_start'),
    null, { timeout: job.run_timeout_ms || 180000 });
  const seconds = (Date.now() - t0) / 1000;
  const state = await page.evaluate(() => window.__invedit);
  // Let the preview images load into their nodes, then picture the finished graph.
  await page.waitForFunction(() => window.app.graph.nodes.filter((n) => n.type === 'PreviewImage')
    .every((n) => n.imgs?.length && n.imgs.every((i) => i.complete && i.naturalWidth > 0)), null, { timeout: 15000 })
    .catch(() => {});
  // The picture: the queue sidebar with the finished task beside the graph, fitted to the rest.
  await page.locator('.queue-tab-button').click();
  await page.waitForTimeout(800);
  await parkMouse();
  const panel = await page.evaluate(() => document.querySelector('.side-bar-panel')?.getBoundingClientRect().right || 0);
  await fitGraph({ zoom: 0.95, fromType: job.run_focus_type,
    area: { x: panel, y: 40, width: VIEWPORT.width - panel, height: VIEWPORT.height - 40 } });
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(RAW, 'finished_run.png') });
  const end = state.events.find((e) => e.type !== 'execution_start');
  return {
    workflow: job.run_workflow, seconds, outcome: end.type, prompt_id: end.detail?.prompt_id,
    error: end.type === 'execution_error' ? end.detail : null,
    executed: state.executed, dialogs: await openDialogs(),
  };
});

result.timings.total = (Date.now() - started) / 1000;
save();
await browser.close();
log('done');
