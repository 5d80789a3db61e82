// Drives the page in headless Chromium as a user does: opens it, types each text of a list into the box, clicks
// Translate, waits for the page to say it is done (or shows an error), and reads what the page shows.
//   node web/test/drive.mjs URL '["Ein Hund.\nZwei Katzen.", ""]' ['{"screenshot": "page.png"}']
// Options: screenshot (a full-page PNG after the last text), width and height (the viewport; default 1280 × 900),
// stages (also return what the page shows of each text's first line: window.pageStages), shots (a folder: one
// PNG of each stage section and of an enlarged attention map).
// Prints JSON: the load's time and message, and per text the page's state, message, translations and time.
import { chromium } from "playwright-core";

const [url, texts, optionsJson] = process.argv.slice(2);
const options = JSON.parse(optionsJson || "{}");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const report = { errors: [], submissions: [] };
try {
  const page = await browser.newPage({ viewport: { width: options.width ?? 1280, height: options.height ?? 900 },
                                       deviceScaleFactor: options.scale ?? 1 });
  page.on("pageerror", (error) => report.errors.push(error.message));
  const state = () => page.evaluate(() => ({
    state: document.body.dataset.state,
    message: document.getElementById("message").textContent,
    error: document.getElementById("message").className === "error",
    outputs: [...document.querySelectorAll("#output li")].map((item) => ({
      beam: item.dataset.beam ?? "", greedy: item.dataset.greedy ?? "", shown: item.textContent })),
  }));
  let started = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: 120000 });
  report.load = { seconds: (Date.now() - started) / 1000, ...(await state()) };
  for (const text of JSON.parse(texts)) {
    if (report.load.state !== "ready") break;
    await page.evaluate(() => { document.body.dataset.state = "busy"; });
    await page.fill("#source", text);
    started = Date.now();
    await page.click("#translate");
    // done, or an error shown on the page (the box's own checks set no state: the message says it)
    await page.waitForFunction(() => document.body.dataset.state !== "busy" ||
      document.getElementById("message").className === "error", null, { timeout: 300000 });
    const seconds = (Date.now() - started) / 1000;
    const submission = { seconds, ...(await state()), timings: await page.evaluate(() => window.pageTimings) };
    if (options.stages && submission.state === "done") {
      submission.stages = await page.evaluate(() => window.pageStages(0));
    }
    report.submissions.push(submission);
  }
  report.widths = await page.evaluate(() => ({ page: document.documentElement.scrollWidth, viewport: innerWidth }));
  if (options.screenshot) await page.screenshot({ path: options.screenshot, fullPage: true });
  if (options.shots) {
    for (const id of ["input", "stage-tokens", "stage-embeddings", "stage-positions", "stage-encoder",
                      "stage-decoder", "stage-cross", "stage-next", "stage-beam"]) {
      await page.locator(`#${id}`).screenshot({ path: `${options.shots}/${id}.png` });
    }
    await page.locator("#grid-decoder button").nth(1).focus();
    await page.keyboard.press("Enter"); // the keyboard opens an enlarged map
    await page.waitForFunction(() => document.getElementById("zoom").open);
    await page.locator("#zoom").screenshot({ path: `${options.shots}/enlarged.png` });
    await page.keyboard.press("Escape");
    report.zoomClosedByEscape = await page.evaluate(() => !document.getElementById("zoom").open);
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
