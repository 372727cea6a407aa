// Drive ComfyUI's own web page in headless Chromium (playwright-core) as a new user sees it: a fresh
// user (ComfyUI's default settings), a 1920x1080 window. Started by tests/browser/comfy_browser.py,
// which starts the server, passes a JSON job as the only argument and reads back <out>/result.json:
//
//   node tests/browser/comfy_page.mjs '{"url": ..., "out": ..., "chromium": ..., "playwright": ...,
//       "pack_module": "invedit", "pack_nodes": [...], "self_explaining_types": [...],
//       "workflows": {file stem: {"nodes": count, "run": bool}}, "tooltip_node": ..., ...}'
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
for (const dir of ['nodes', 'opened', 'after_run', 'controls']) fs.mkdirSync(path.join(RAW, dir), { recursive: true });
const VIEWPORT = { width: 1920, height: 1080 };
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

// The page rectangle of the graph (nodes and groups) as it is drawn now, with a margin, inside the canvas.
async function graphClip(margin = 16) {
  const rect = await page.evaluate(() => {
    const { app } = window;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    const boxes = [...app.graph.nodes.map((n) => Array.from(n.getBounding())), ...app.graph.groups.map((g) => Array.from(g._bounding))];
    for (const [x, y, w, h] of boxes) { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h); }
    return [x0, y0, x1 - x0, y1 - y0];
  });
  const box = await toPage(rect);
  const canvas = await page.evaluate(() => JSON.parse(JSON.stringify(window.app.canvas.canvas.getBoundingClientRect())));
  const x = Math.max(canvas.left, box.x - margin), y = Math.max(canvas.top, box.y - margin);
  return { x, y, width: Math.min(canvas.right, box.x + box.width + margin) - x,
    height: Math.min(canvas.bottom, box.y + box.height + margin) - y };
}

// Park the mouse where it raises no tooltip: the canvas's right edge (the top bar holds the
// workflow tabs, whose hover shows a preview).
const parkMouse = () => page.mouse.move(VIEWPORT.width - 8, VIEWPORT.height / 2);

// What the canvas shows now: zoom, whether text is drawn, every node's and group's box, display
// nodes' content, widgets fed by links and the value they show.
const canvasState = () => page.evaluate((displayTypes) => {
  const { app, LiteGraph } = window;
  const canvas = app.canvas;
  const measure = document.createElement('canvas').getContext('2d');
  const nodes = app.graph.nodes.map((n) => {
    const entry = { id: n.id, type: n.type, title: n.title, box: Array.from(n.getBounding()), collapsed: !!n.flags?.collapsed };
    // LGraphNode.drawTitleText: the title gets the node's width less two title heights; a
    // collapsed node shows its first 20 characters.
    measure.font = n.titleFontStyle;
    entry.title_drawn_whole = n.flags?.collapsed ? (n.title || '').length <= 20
      : measure.measureText(n.title || '').width <= n.size[0] - 2 * LiteGraph.NODE_TITLE_HEIGHT;
    if (displayTypes.includes(n.type)) {
      const imgs = (n.imgs || []).filter((i) => i.complete && i.naturalWidth > 0);
      entry.images = imgs.map((i) => [i.naturalWidth, i.naturalHeight]);
      const preview = n.widgets?.find((w) => w.name === 'preview');
      entry.text = preview ? String(preview.value ?? '') : null;
    }
    const linked = (n.inputs || []).filter((i) => i.widget && i.link != null).map((i) => {
      const widget = n.widgets?.find((w) => w.name === i.widget.name);
      const link = app.graph.links[i.link] ?? app.graph.links.get?.(i.link);
      const origin = link && app.graph.getNodeById(link.origin_id);
      const originValue = origin?.type?.startsWith('Primitive') ? origin.widgets?.find((w) => w.name === 'value')?.value : null;
      return { name: i.widget.name, value: widget ? widget.value : null, origin: origin?.type, origin_value: originValue ?? null };
    });
    if (linked.length) entry.linked_widgets = linked;
    return entry;
  });
  const rect = canvas.canvas.getBoundingClientRect();
  return {
    scale: canvas.ds.scale, low_quality: canvas.low_quality, canvas: [rect.width, rect.height],
    min_font_size_for_lod: canvas.min_font_size_for_lod, nodes,
    groups: app.graph.groups.map((g) => ({ title: g.title, box: Array.from(g._bounding) })),
  };
}, job.display_types);

// ---------------------------------------------------------------------------------------------

await step('open_page', async () => {
  await page.goto(job.url, { waitUntil: 'load', timeout: 60000 });
  await page.waitForFunction(
    (ids) => window.app?.graph && window.LiteGraph && ids.every((id) => id in window.LiteGraph.registered_node_types),
    job.pack_nodes, { timeout: 60000 });
  await page.locator('[data-testid="queue-button"]').waitFor({ timeout: 30000 });
  // A fresh user is greeted by the template browser.
  const firstRun = await page.locator('.p-dialog[aria-labelledby="global-template-workflows"]')
    .waitFor({ timeout: 15000 }).then(() => true, () => false);
  const settings = await page.evaluate(async () => (await fetch('/api/settings')).json());
  await page.evaluate(() => window.app.graph.clear()); // a new user's default graph: not ours to picture
  return { title: await page.title(), first_run_template_dialog: firstRun, settings,
    sidebar_templates_button: await page.locator('.templates-tab-button').count() };
});

// The template browser on the pack's category: every card as the user reads it.
async function openTemplateBrowser() {
  const dialog = page.locator('.p-dialog[aria-labelledby="global-template-workflows"]');
  if (!(await dialog.count())) {
    await page.locator('.templates-tab-button').click();  // the side bar's Templates button
  }
  await dialog.waitFor();
  await dialog.getByText(job.pack_module, { exact: true }).first().click();
  return dialog;
}

await step('template_cards', async () => {
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
  const dialog = await openTemplateBrowser();
  await page.waitForTimeout(1500);
  // The grid pages its cards and shows each thumbnail only while it is in view (LazyImage):
  // scroll through it, noting every thumbnail once it has loaded.
  const seen = {};
  for (let i = 0; i < 30; i++) {
    await page.waitForTimeout(700);
    Object.assign(seen, await dialog.evaluate((root) => Object.fromEntries([...root.querySelectorAll('.template-card')]
      .map((card) => [card.getAttribute('data-testid'), card.querySelector('img')])
      .filter(([, img]) => img && img.complete && img.naturalWidth > 0)
      .map(([id, img]) => [id, [img.naturalWidth, img.naturalHeight]]))));
    const moved = await page.evaluate(() => {
      const content = document.querySelector('.p-dialog .p-dataview-content');
      const before = content?.scrollTop;
      content?.scrollBy(0, 250);
      return content?.scrollTop !== before;
    });
    if (!moved) break;
  }
  const cards = await dialog.evaluate((root, seen) => [...root.querySelectorAll('.template-card')].map((card) => {
    const title = card.querySelector('h3'), description = card.querySelector('p');
    const id = card.getAttribute('data-testid');
    return {
      testid: id, title: title?.textContent.trim(), description: description?.textContent.trim(),
      title_clamped: title ? title.scrollHeight > title.clientHeight + 1 : null,
      title_lines: title ? Math.round(title.scrollHeight / parseFloat(getComputedStyle(title).lineHeight)) : null,
      thumbnail: { loaded: id in seen, natural: seen[id] || [0, 0] },
    };
  }), seen);
  await page.evaluate(() => document.querySelector('.p-dialog .p-dataview-content')?.scrollTo(0, 0));
  await page.waitForFunction(() => [...document.querySelectorAll('.p-dialog .template-card')].slice(0, 8)
    .every((card) => card.querySelector('img')?.naturalWidth > 0), null, { timeout: 10000 }).catch(() => {});
  await page.waitForTimeout(600);
  await parkMouse();
  await page.screenshot({ path: path.join(RAW, 'templates.png') });
  await closeDialogs();
  return { ...listed, cards };
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
  // The picture: the library searched for the pack, with one node's preview on hover.
  await search.fill('InvEdit');
  await page.waitForTimeout(600);
  const leaf = page.locator('.side-bar-panel .tree-leaf', { hasText: displayNames[job.tooltip_node] }).first();
  await leaf.hover();
  const preview = page.locator('.node-lib-node-preview');
  const previewShown = await preview.waitFor({ timeout: 5000 }).then(() => true, () => false);
  const previewText = previewShown ? await preview.innerText() : '';
  await page.waitForTimeout(300);
  const right = await page.evaluate(() => Math.max(...['.side-bar-panel', '.node-lib-node-preview']
    .map((s) => document.querySelector(s)?.getBoundingClientRect().right || 0)));
  await page.screenshot({ path: path.join(RAW, 'node_library.png'),
    clip: { x: 0, y: 0, width: Math.min(VIEWPORT.width, right + 24), height: VIEWPORT.height } });
  const leaves = await page.evaluate(() =>
    [...document.querySelectorAll('.side-bar-panel .tree-leaf .node-label')].map((e) => e.textContent.trim()));
  await search.fill('');
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

// Open a workflow from the template browser as a user does (the side bar's Templates button, the
// pack's category, the card), then let the frontend fit it as it does on open.
async function openTemplate(name, nodeCount) {
  await closeDialogs();
  const dialog = await openTemplateBrowser();
  await dialog.getByPlaceholder(/search templates/i).fill(name);
  const card = dialog.locator(`[data-testid="template-workflow-${name}"]`);
  await card.waitFor();
  await card.click();
  await dialog.waitFor({ state: 'detached' });
  await page.waitForFunction((n) => window.app.graph.nodes.length === n, nodeCount, { timeout: 10000 }).catch(() => {});
  await page.waitForTimeout(600); // fitView runs on the next frame; warnings open right after loadGraphData
  await nextFrames();
}

const displayContent = (state) => Object.fromEntries(state.nodes.filter((n) => job.display_types.includes(n.type))
  .map((n) => [n.title, (n.images?.length ?? 0) > 0 || !!(n.text && n.text.trim())]));

// Queue the open workflow with the Run button; wait for its end and for the display nodes to fill.
async function runOpenWorkflow(timeoutMs) {
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
    null, { timeout: timeoutMs });
  const seconds = (Date.now() - t0) / 1000;
  const state = await page.evaluate(() => window.__invedit);
  // Let the images load into their nodes (a display node that stays empty is what is checked).
  await page.waitForFunction((types) => window.app.graph.nodes.filter((n) => types.includes(n.type))
    .every((n) => (n.imgs?.length && n.imgs.every((i) => i.complete && i.naturalWidth > 0))
      || n.widgets?.find((w) => w.name === 'preview')?.value), job.display_types, { timeout: 15000 }).catch(() => {});
  await page.waitForTimeout(500);
  await redraw();
  const end = state.events.find((e) => e.type !== 'execution_start');
  return {
    seconds, outcome: end.type, prompt_id: end.detail?.prompt_id,
    error: end.type === 'execution_error' ? { node_type: end.detail.node_type, message: end.detail.exception_message } : null,
    executed: state.executed,
  };
}

await step('workflows', async () => {
  const out = {};
  for (const [name, info] of Object.entries(job.workflows)) {
    const entry = (out[name] = {});
    const t0 = Date.now();
    try {
      await openTemplate(name, info.nodes);
      entry.dialogs = await openDialogs();
      entry.missing_nodes_dialog = entry.dialogs.includes('global-load-workflow-warning');
      if (entry.missing_nodes_dialog) {
        entry.missing_nodes_text = await page.locator('.p-dialog[aria-labelledby="global-load-workflow-warning"]').innerText();
      }
      entry.missing_models_dialog = entry.dialogs.includes('global-missing-models-warning');
      Object.assign(entry, await page.evaluate(() => {
        const nodes = window.app.graph.nodes;
        return {
          node_count: nodes.length,
          unregistered: nodes.filter((n) => !(n.type in window.LiteGraph.registered_node_types)).map((n) => n.type),
          with_errors: nodes.filter((n) => n.has_errors).map((n) => n.type || n.last_serialization?.type),
        };
      }));
      await closeDialogs();
      await parkMouse();
      await redraw();
      entry.opened = await canvasState();
      entry.opened_screenshot = path.join(RAW, 'opened', `${name}.png`);
      await page.screenshot({ path: entry.opened_screenshot });
      entry.opened_clip = await graphClip();
      if (info.run) {
        entry.run = await runOpenWorkflow(job.run_timeout_ms);
        entry.after_run = await canvasState();
        entry.display_content = displayContent(entry.after_run);
        entry.after_run_screenshot = path.join(RAW, 'after_run', `${name}.png`);
        await page.screenshot({ path: entry.after_run_screenshot });
        entry.after_run_clip = await graphClip();
      }
      entry.seconds = (Date.now() - t0) / 1000;
    } catch (error) {
      entry.error = String(error.stack || error).slice(0, 2000);
      await page.screenshot({ path: path.join(RAW, `error_workflow_${name}.png`) }).catch(() => {});
    }
    save();
  }
  return out;
});

// Negative controls: the checks above must be able to fail.
// 1. A graph with an unknown node type raises the missing-nodes warning.
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

// 2. The same workflow spread out (positions x3) opens below the text threshold: text not drawn.
// 3. The same workflow with an enlarger the server refuses (scale_by above its maximum): the run
//    succeeds but that preview stays empty.
await step('layout_controls', async () => {
  const workflow = job.control_workflow;
  const spread = JSON.parse(JSON.stringify(workflow.json));
  for (const node of spread.nodes) node.pos = [node.pos[0] * 3, node.pos[1] * 3];
  spread.groups = [];
  await closeDialogs();
  await page.evaluate((wf) => window.app.loadGraphData(wf, true, true, 'control-spread'), spread);
  await page.waitForTimeout(600);
  await closeDialogs();
  await nextFrames();
  const spreadState = await canvasState();
  await page.screenshot({ path: path.join(RAW, 'controls', 'spread.png') });
  const broken = JSON.parse(JSON.stringify(workflow.json));
  const enlarger = broken.nodes.find((n) => n.id === workflow.broken_node);
  enlarger.widgets_values[1] = workflow.broken_scale;
  await page.evaluate((wf) => window.app.loadGraphData(wf, true, true, 'control-broken'), broken);
  await page.waitForTimeout(600);
  await closeDialogs();
  const run = await runOpenWorkflow(job.run_timeout_ms);
  const brokenState = await canvasState();
  await page.screenshot({ path: path.join(RAW, 'controls', 'broken_preview.png') });
  return { spread: { scale: spreadState.scale, low_quality: spreadState.low_quality, canvas: spreadState.canvas },
    broken: { outcome: run.outcome, display_content: displayContent(brokenState), broken_node: workflow.broken_node } };
});

result.timings.total = (Date.now() - started) / 1000;
save();
await browser.close();
log('done');
