// Mailpit's and MailHog's own npm clients against a running fakesmtp, unchanged but for the
// address. Run by tests/test_npm_clients.py with FAKESMTP_API (http://host:port) and
// FAKESMTP_SMTP_PORT; prints one line per check and exits 1 at the first failure.
import assert from "node:assert/strict";
import net from "node:net";
import { createRequire } from "node:module";
import { MailpitClient } from "mailpit-api";

const require = createRequire(import.meta.url);
const mailhog = require("mailhog");

const api = process.env.FAKESMTP_API;
const smtpPort = Number(process.env.FAKESMTP_SMTP_PORT);
const apiUrl = new URL(api);

// A minimal SMTP client: one message per connection; resolves with the last reply code.
function send({ to, subject, body = "Hello there.", attachment = null }) {
  const lines = [
    "From: Shop <shop@example.test>",
    `To: ${to}`,
    `Subject: ${subject}`,
    `Message-ID: <${subject.replace(/\W+/g, ".")}@example.test>`,
    "MIME-Version: 1.0",
  ];
  if (attachment) {
    lines.push('Content-Type: multipart/mixed; boundary="b1"', "", "--b1",
      "Content-Type: text/plain; charset=utf-8", "", body, "--b1",
      `Content-Type: text/plain; name="${attachment.name}"`,
      `Content-Disposition: attachment; filename="${attachment.name}"`,
      "Content-Transfer-Encoding: base64", "",
      Buffer.from(attachment.content).toString("base64"), "--b1--");
  } else {
    lines.push("Content-Type: text/plain; charset=utf-8", "", body);
  }
  const address = to.match(/<(.*)>/)?.[1] ?? to;
  const commands = ["EHLO node.example.test", "MAIL FROM:<shop@example.test>",
    `RCPT TO:<${address}>`, "DATA", lines.join("\r\n") + "\r\n.", "QUIT"];
  return new Promise((resolve, reject) => {
    const socket = net.connect(smtpPort, "127.0.0.1");
    let buffer = "";
    let step = -1; // -1: waiting for the banner
    socket.setTimeout(5000, () => reject(new Error("SMTP timeout")));
    socket.on("error", reject);
    socket.on("data", (chunk) => {
      buffer += chunk.toString();
      const replies = buffer.split("\r\n");
      buffer = replies.pop();
      for (const line of replies) {
        if (line[3] === "-") continue; // a multi-line reply goes on
        const code = Number(line.slice(0, 3));
        if (code >= 400 || step === commands.length - 1) {
          socket.end();
          return resolve(code >= 400 ? code : 250);
        }
        step += 1;
        socket.write(commands[step] + "\r\n");
      }
    });
  });
}

let failures = 0;
async function check(name, body) {
  try {
    await body();
    console.log(`ok - ${name}`);
  } catch (error) {
    failures += 1;
    console.log(`not ok - ${name}: ${error.stack || error}`);
  }
}

const mailpit = new MailpitClient(api);

await check("mailpit: deleteMessages() empties the mailbox", async () => {
  await mailpit.deleteMessages();
  assert.equal((await mailpit.listMessages()).messages_count, 0);
});

await check("mailpit: listMessages() sees subjects, IDs, addresses", async () => {
  assert.equal(await send({ to: "Bob <bob@example.test>", subject: "Welcome Bob" }), 250);
  assert.equal(await send({ to: "dave@example.test", subject: "Invoice 42",
    attachment: { name: "invoice.txt", content: "total: 42" } }), 250);
  const list = await mailpit.listMessages();
  assert.equal(list.total, 2);
  assert.equal(list.messages_count, 2);
  assert.deepEqual(list.messages.map((m) => m.Subject), ["Invoice 42", "Welcome Bob"]);
  assert.equal(list.messages[1].To[0].Address, "bob@example.test");
  assert.equal(list.messages[1].To[0].Name, "Bob");
  assert.equal(list.messages[0].Attachments, 1);
  assert.ok(list.messages[0].ID);
});

await check("mailpit: getMessageSummary() latest, with its attachment", async () => {
  const latest = await mailpit.getMessageSummary();
  assert.equal(latest.Subject, "Invoice 42");
  assert.equal(latest.Text.trim(), "Hello there.");
  assert.equal(latest.Attachments[0].FileName, "invoice.txt");
  const blob = await mailpit.getMessageAttachment(latest.ID, latest.Attachments[0].PartID);
  assert.equal(await blob.text(), "total: 42");
});

await check("mailpit: getMessageSource() and getMessageHeaders()", async () => {
  const [welcome] = (await mailpit.searchMessages({ query: "subject:Welcome" })).messages;
  const raw = await mailpit.getMessageSource(welcome.ID);
  assert.match(raw, /^Subject: Welcome Bob\r?$/m);
  const headers = await mailpit.getMessageHeaders(welcome.ID);
  assert.deepEqual(headers.Subject, ["Welcome Bob"]);
  assert.deepEqual(headers["Message-Id"], ["<Welcome.Bob@example.test>"]); // Go's name form
});

await check("mailpit: searchMessages() with Mailpit's syntax", async () => {
  const found = await mailpit.searchMessages({ query: 'to:bob "welcome bob" -has:attachment' });
  assert.deepEqual(found.messages.map((m) => m.Subject), ["Welcome Bob"]);
  assert.equal((await mailpit.searchMessages({ query: "has:attachment" })).messages_count, 1);
  assert.equal((await mailpit.searchMessages({ query: "to:nobody" })).messages_count, 0);
});

await check("mailpit: waitForMessage() for a message sent while it waits", async () => {
  setTimeout(() => send({ to: "carol@example.test", subject: "Late Carol" }), 300);
  const message = await mailpit.waitForMessage({ query: "to:carol" }, { timeout: 5000, interval: 100 });
  assert.equal(message.Subject, "Late Carol");
});

await check("mailpit: chaos Recipient 451 at 100%, then cleared", async () => {
  const set = await mailpit.setChaosTriggers({ Recipient: { ErrorCode: 451, Probability: 100 } });
  assert.deepEqual(set.Recipient, { ErrorCode: 451, Probability: 100 });
  assert.equal((await mailpit.getChaosTriggers()).Recipient.Probability, 100);
  assert.equal(await send({ to: "erin@example.test", subject: "Refused" }), 451);
  const cleared = await mailpit.setChaosTriggers();
  assert.equal(cleared.Recipient.Probability, 0);
  assert.equal(await send({ to: "erin@example.test", subject: "Accepted" }), 250);
});

await check("mailpit: sendMessage() goes through SMTP and is listed", async () => {
  const sent = await mailpit.sendMessage({
    From: { Email: "api@example.test", Name: "API" },
    To: [{ Email: "frank@example.test", Name: "Frank" }],
    Subject: "Via the API",
    Text: "Sent with sendMessage.",
  });
  const message = await mailpit.waitForMessage({ query: "to:frank" }, { timeout: 5000, interval: 100 });
  assert.equal(message.ID, sent.ID);
  assert.equal(message.Subject, "Via the API");
  assert.equal(message.To[0].Name, "Frank");
});

await check("mailpit: deleteMessages({IDs}) and deleteMessagesBySearch()", async () => {
  const before = await mailpit.listMessages();
  await mailpit.deleteMessages({ IDs: [before.messages[0].ID] });
  assert.equal((await mailpit.listMessages()).messages_count, before.messages_count - 1);
  await mailpit.deleteMessagesBySearch({ query: "to:carol" });
  assert.equal((await mailpit.searchMessages({ query: "to:carol" })).messages_count, 0);
  assert.equal((await mailpit.getInfo()).Messages, before.messages_count - 2);
});

const hog = mailhog({ host: apiUrl.hostname, port: Number(apiUrl.port) });

await check("mailhog: messages() with subject, text and attachments", async () => {
  const result = await hog.messages();
  assert.ok(result.total >= 2);
  const invoice = result.items.find((item) => item.subject === "Invoice 42");
  assert.ok(invoice, "the invoice is listed");
  assert.equal(invoice.text.trim(), "Hello there.");
  assert.equal(invoice.attachments[0].name, "invoice.txt");
  assert.equal(invoice.from, "Shop <shop@example.test>");
});

await check("mailhog: search() and latestTo()", async () => {
  const found = await hog.search("invoice");
  assert.ok(found.items.some((item) => item.subject === "Invoice 42"));
  const latest = await hog.latestTo("dave@example.test");
  assert.equal(latest.subject, "Invoice 42");
  assert.equal((await hog.search("nobody@nowhere.test", "to")).count, 0);
});

await check("mailhog: deleteMessage() and deleteAll()", async () => {
  const before = await hog.messages();
  await hog.deleteMessage(before.items[0].ID);
  assert.equal((await hog.messages()).total, before.total - 1);
  await hog.deleteAll();
  assert.equal((await hog.messages()).total, 0);
});

console.log(`${failures === 0 ? "all passed" : `${failures} failed`}`);
process.exit(failures === 0 ? 0 : 1);
