// Chat: a conversation streamed through /v1/chat/completions (the same endpoint any
// OpenAI client uses), with a stop button that aborts the request mid-stream.
import { getBytes, getLines, getMessages } from "../vendor/fetch-event-source/parse.js";
import { HttpError, getJSON, send } from "./api.js";
import { h } from "./format.js";

export class Chat {
  constructor(root, { onDenied }) {
    this.root = root;
    this.onDenied = onDenied;
    this.messages = [];
    this.abort = null;
    this.form = root.querySelector("form");
    this.log = root.querySelector(".log");
    this.picker = root.querySelector("select");
    this.maxTokens = root.querySelector("#chat-max");
    this.input = root.querySelector("textarea");
    this.sendButton = root.querySelector("button[type=submit]");
    this.stopButton = root.querySelector("button.stop");
    this.clearButton = root.querySelector("button.clear");
    this.status = root.querySelector(".chat-status");
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); this.send(); }
    });
    this.stopButton.addEventListener("click", () => this.abort?.abort());
    this.clearButton.addEventListener("click", () => { this.messages = []; this.log.replaceChildren(); });
  }

  /** The models /v1/models lists; the choice is kept when it is still served. */
  async loadModels() {
    try {
      const body = await getJSON("/v1/models");
      const ids = (body.data || []).map((m) => m.id);
      const keep = this.picker.value;
      this.picker.replaceChildren(...ids.map((id) => h("option", { value: id }, id)));
      if (ids.includes(keep)) this.picker.value = keep;
      this.sendButton.disabled = !ids.length || !!this.abort;
    } catch (error) {
      if (error instanceof HttpError && error.status === 401) this.onDenied();
    }
  }

  busy(on) {
    this.sendButton.disabled = on;
    this.stopButton.disabled = !on;
    this.root.classList.toggle("streaming", on);
  }

  bubble(role, text) {
    const body = h("div", { class: "text" }, text);
    this.log.append(h("div", { class: `msg ${role}` }, h("div", { class: "who" }, role), body));
    this.log.scrollTop = this.log.scrollHeight;
    return body;
  }

  async send() {
    const text = this.input.value.trim();
    if (!text || this.abort || !this.picker.value) return;
    this.input.value = "";
    this.messages.push({ role: "user", content: text });
    this.bubble("user", text);
    const out = this.bubble("assistant", "");
    out.classList.add("pending");
    this.abort = new AbortController();
    this.busy(true);
    this.status.textContent = "streaming…";
    let reply = "";
    let done = "";
    try {
      const response = await send("POST", "/v1/chat/completions", {
        signal: this.abort.signal,
        body: {
          model: this.picker.value, messages: this.messages, stream: true,
          ...(this.maxTokens.value ? { max_tokens: Number(this.maxTokens.value) } : {}),
        },
      });
      await getBytes(response.body, getLines(getMessages(() => {}, () => {}, (message) => {
        if (!message.data || message.data === "[DONE]") return;
        const chunk = JSON.parse(message.data);
        const choice = chunk.choices?.[0];
        const piece = choice?.delta?.content || "";
        if (piece) {
          reply += piece;
          out.textContent = reply;
          this.log.scrollTop = this.log.scrollHeight;
        }
        if (choice?.finish_reason) done = choice.finish_reason;
        if (chunk.id) out.parentElement.dataset.request = chunk.id;
      })));
      this.status.textContent = done ? `done (${done})` : "done";
    } catch (error) {
      if (error.name === "AbortError") {
        this.status.textContent = "stopped";
      } else {
        if (error instanceof HttpError && error.status === 401) this.onDenied();
        this.status.textContent = `error: ${error.message}`;
        out.parentElement.classList.add("failed");
      }
    } finally {
      out.classList.remove("pending");
      if (reply) this.messages.push({ role: "assistant", content: reply });
      else this.messages.pop(); // nothing came back: the question is asked again, not kept twice
      this.abort = null;
      this.busy(false);
      this.input.focus();
    }
  }
}
