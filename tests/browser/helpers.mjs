// Shared by the browser tests: the environment tests/test_browser.py sets, a Chromium per
// test file, pages that keep what their console printed, and polling with a deadline.
import puppeteer from 'puppeteer-core';

export const env = {
  chromium: process.env.CHATD_CHROMIUM,
  http: process.env.CHATD_HTTP,
  stompWs: process.env.CHATD_STOMP_WS,
  chatWs: process.env.CHATD_CHAT_WS,
  origin: process.env.CHATD_ORIGIN,
  refusedOrigin: process.env.CHATD_REFUSED_ORIGIN,
  control: process.env.CHATD_CONTROL,
};

export const token = (id) => {
  const t = process.env[`CHATD_TOKEN_${id}`];
  if (!t) throw new Error(`CHATD_TOKEN_${id} is not set`);
  return t;
};

// Every wait in these tests is bounded; a busy 2-core machine gets generous ones.
export const WAIT_MS = 30000;
export const TEST = { timeout: 120000 };

export async function launch() {
  return puppeteer.launch({
    executablePath: env.chromium,
    headless: true,
    // As root (CI) Chromium's sandbox cannot start; /dev/shm may be small in containers.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run'],
    protocolTimeout: 60000,
  });
}

// A page that records its console lines (text and, where JSON-able, values) and errors.
export async function openPage(browser, url, { width = 1100, height = 760 } = {}) {
  const page = await browser.newPage();
  page.consoleValues = [];
  page.consoleText = [];
  page.errors = [];
  page.on('console', async (msg) => {
    page.consoleText.push(msg.text());
    try {
      page.consoleValues.push(await Promise.all(msg.args().map((a) => a.jsonValue())));
    } catch { /* the page navigated away */ }
  });
  page.on('pageerror', (err) => page.errors.push(String(err)));
  page.on('dialog', (d) => d.accept());
  await page.setViewport({ width, height });
  if (url) await page.goto(url, { waitUntil: 'load', timeout: WAIT_MS });
  return page;
}

// Polls `probe` until it returns something truthy, and returns that.
export async function until(what, probe, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function post(path, jwt, body) {
  const resp = await fetch(env.http + path, {
    method: 'POST',
    headers: { Authorization: `Bearer ${jwt}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  return { status: resp.status, body: await resp.json().catch(() => null) };
}

export async function control(command) {
  const resp = await fetch(`${env.control}/${command}`, {
    method: 'POST', signal: AbortSignal.timeout(60000),
  });
  if (resp.status !== 204) throw new Error(`control ${command}: ${resp.status} ${await resp.text()}`);
}
