// Drives the page in headless Chromium as a user does: opens it, types each text of a list into the box, clicks
// Translate, waits for the page to say it is done (or shows an error), and reads what the page shows.
//   node web/test/drive.mjs URL '["Ein Hund.\nZwei Katzen.", ""]' [SCREENSHOT.png]
// Prints JSON: the load's time and message, and per text the page's state, message, translations and time.
import { chromium } from "playwright-core";

const [url, texts, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const report = { errors: [], submissions: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 1000 } });
  page.on("pageerror", (error) => report.errors.push(error.message));
  const state = () => page.evaluate(() => ({
    state: document.body.dataset.state,
    message: document.getElementById("message").textContent,
    error: document.getElementById("message").className === "error",
    outputs: [...document.querySelectorAll("#output li")].map((item) => item.textContent),
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
    report.submissions.push({ seconds: (Date.now() - started) / 1000, ...(await state()) });
  }
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
