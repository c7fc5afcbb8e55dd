// aiswarm dashboard. Everything from the broker is written with textContent: nothing a task carries is
// ever parsed as HTML.
"use strict";

const COLUMNS = ["pending", "blocked", "claimed", "completed", "failed", "dead", "cancelled"];
const COLUMN_TITLES = {claimed: "running"};
let csrf = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(seconds) {
  if (!seconds) return "";
  return new Date(seconds * 1000).toLocaleTimeString();
}

function say(text, isError) {
  const box = document.getElementById("message");
  if (!box) return;
  box.textContent = text;
  box.classList.toggle("error", Boolean(isError));
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({credentials: "same-origin"}, options || {}));
  if (response.status === 401) {
    window.location.assign("/ui/login");
    throw new Error("not logged in");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
  return body;
}

async function act(path, payload) {
  const headers = {"content-type": "application/json"};
  if (csrf) headers["x-aiswarm-csrf"] = csrf;
  return api(path, {method: "POST", headers: headers, body: JSON.stringify(payload || {})});
}

function agentState(agent) {
  // The launcher's word (cooling down, circuit open) wins over the broker's idle: it is why the agent takes no work.
  if (agent.state === "cooling") return "cooling down" + (agent.state_until ? " until " + when(agent.state_until) : "");
  if (agent.state === "circuit_open") return "circuit open" + (agent.state_reason ? ": " + agent.state_reason : "");
  if (agent.status === "busy" && agent.current_task_id) return "running task #" + agent.current_task_id;
  return agent.status;
}

function agentCli(agent) {
  const provider = (agent.capabilities || []).find((c) => c.startsWith("provider:"));
  return provider ? agent.cli + " @ " + provider.slice("provider:".length) : agent.cli;
}

function renderAgents(agents, wide) {
  const body = document.querySelector("#agents tbody");
  if (!body) return;
  const rows = agents.map((agent) => {
    const task = agent.current_task_id
      ? el("a", {href: "/ui/tasks/" + agent.current_task_id}, "#" + agent.current_task_id) : "";
    const cells = [
      el("td", {}, agent.name), el("td", {}, agentCli(agent)), el("td", {}, agent.persona || ""),
      el("td", {class: "state-" + agent.status}, agentState(agent)), el("td", {}, task),
    ];
    if (wide) {
      cells.push(el("td", {}, (agent.capabilities || []).join(", ")), el("td", {}, when(agent.last_seen_at)));
    }
    return el("tr", {"data-agent": agent.name}, ...cells);
  });
  body.replaceChildren(...rows);
}

function renderBoard(snapshot) {
  const board = document.getElementById("board");
  const columns = COLUMNS.map((status) => {
    const cards = (snapshot.columns[status] || []).map((task) => el(
      "a", {class: "card", href: "/ui/tasks/" + task.id, "data-task-id": String(task.id), "data-status": status},
      el("span", {class: "card-id"}, "#" + task.id),
      el("span", {class: "card-title"}, task.title),
      el("span", {class: "card-meta"},
        [task.persona, task.agent, task.failures ? task.failures + " failed" : null].filter(Boolean).join(" · ")),
      task.progress ? el("span", {class: "card-progress"}, task.progress) : null,
      task.question ? el("span", {class: "card-question"}, "asks: " + task.question) : null,
    ));
    return el("section", {class: "column", "data-status": status},
      el("h2", {}, (COLUMN_TITLES[status] || status) + " ", el("span", {class: "count"}, snapshot.counts[status] || 0)),
      ...cards);
  });
  board.replaceChildren(...columns);
  renderAgents(snapshot.agents, false);
}

function follow(onBoard) {
  const live = document.getElementById("live");
  const source = new EventSource("/ui/api/events");
  source.addEventListener("board", (event) => {
    live.dataset.state = "live";
    live.textContent = "live";
    onBoard(JSON.parse(event.data));
  });
  source.onerror = () => {
    live.dataset.state = "reconnecting";
    live.textContent = "reconnecting";
  };
}

function boardPage() {
  follow(renderBoard);
  document.getElementById("submit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    try {
      const reply = await act("/ui/api/tasks", {
        title: form.title.value, prompt: form.prompt.value, persona: form.persona.value || null,
      });
      say(reply.message);
      form.reset();
    } catch (error) {
      say(error.message, true);
    }
  });
}

function agentsPage() {
  follow((snapshot) => renderAgents(snapshot.agents, true));
}

function renderLog(lines) {
  document.getElementById("log-section").hidden = !lines;
  document.getElementById("task-log").textContent = (lines || []).join("\n");
}

function renderUsage(usage) {
  const text = usage
    ? usage.requests + " model request(s), " + usage.input_tokens + " input and " + usage.output_tokens
      + " output tokens over " + usage.runs + " run(s)"
    : "not reported (the launcher reports it after each CLI run)";
  document.getElementById("task-usage").textContent = text;
}

function renderTask(task) {
  document.title = "aiswarm · #" + task.id + " " + task.title;
  document.getElementById("task-id").textContent = "#" + task.id;
  document.getElementById("task-title").textContent = task.title;
  const status = document.getElementById("task-status");
  status.textContent = task.status === "claimed" ? "running" : task.status;
  status.dataset.status = task.status;
  const facts = [
    ["priority", task.priority], ["persona", task.persona], ["capabilities", (task.capabilities || []).join(", ")],
    ["depends on", (task.depends_on || []).map((id) => "#" + id).join(", ")], ["working dir", task.working_dir],
    ["agent", task.claimed_by], ["progress", task.progress], ["submitted by", task.submitted_by],
    ["created", when(task.created_at)], ["finished", when(task.finished_at)],
    ["attempts", task.attempts.length + " of " + task.max_attempts], ["timeout", task.timeout_seconds + " s"],
  ].filter(([, value]) => value !== null && value !== undefined && value !== "");
  document.getElementById("task-facts").replaceChildren(
    ...facts.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
  document.getElementById("task-prompt").textContent = task.prompt;
  document.getElementById("task-result").textContent = task.result || "—";
  document.getElementById("task-error").textContent = task.error || "—";
  document.getElementById("task-data").textContent = task.data ? JSON.stringify(task.data, null, 2) : "—";
  const attempts = task.attempts.map((attempt) => {
    const took = attempt.finished_at ? " (" + (attempt.finished_at - attempt.claimed_at).toFixed(1) + " s)" : "";
    return el("li", {"data-outcome": attempt.outcome},
      el("strong", {}, "attempt " + attempt.number + ": " + attempt.outcome),
      " by " + attempt.agent + ", fence " + attempt.fence_token + ", claimed " + when(attempt.claimed_at)
        + (attempt.finished_at ? ", ended " + when(attempt.finished_at) : "") + took,
      attempt.error ? el("div", {class: "attempt-error"}, attempt.error) : null);
  });
  document.getElementById("task-attempts").replaceChildren(
    ...(attempts.length ? attempts : [el("li", {class: "none"}, "not claimed yet")]));
  const open = task.question;
  document.getElementById("question-section").hidden = !open;
  document.getElementById("task-question").textContent = open
    ? open.agent + " asks: " + open.question + (open.options.length ? " (options: " + open.options.join(" | ") + ")" : "")
      + "; unanswered by " + when(open.deadline_at) + ", it " + (open.on_timeout === "fail" ? "fails" : "continues on its own judgement")
    : "";
  const asked = (task.questions || []).map((q) => el("li", {"data-status": q.status},
    el("strong", {}, "#" + q.id + " " + q.status + ": "), q.question,
    q.answer !== null ? el("div", {}, "answer (" + q.answered_by + "): " + q.answer) : null));
  document.getElementById("questions-section").hidden = !asked.length;
  document.getElementById("task-questions").replaceChildren(...asked);
  const terminal = ["completed", "failed", "dead", "cancelled"].includes(task.status);
  document.getElementById("action-cancel").disabled = terminal;
  document.getElementById("action-release").disabled = task.status !== "claimed";
  document.getElementById("action-requeue").disabled = !["failed", "dead"].includes(task.status);
}

function taskPage() {
  const id = Number(window.location.pathname.split("/").pop());
  const load = async () => {
    try {
      const reply = await api("/ui/api/tasks/" + id);
      renderTask(reply.task);
      renderLog(reply.log_tail);
      renderUsage(reply.usage);
    } catch (error) {
      say(error.message, true);
    }
  };
  for (const [action, confirmText] of [["cancel", "Cancel this task?"], ["release", "Hand this task back to the queue?"], ["requeue", "Submit this task again?"]]) {
    document.getElementById("action-" + action).addEventListener("click", async () => {
      if (!window.confirm(confirmText)) return;
      try {
        const reply = await act("/ui/api/tasks/" + id + "/" + action);
        say(reply.message);
        await load();
      } catch (error) {
        say(error.message, true);
      }
    });
  }
  document.getElementById("answer-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = document.getElementById("answer-text");
    try {
      const reply = await act("/ui/api/tasks/" + id + "/answer", {answer: text.value});
      text.value = "";
      say(reply.message);
      await load();
    } catch (error) {
      say(error.message, true);
    }
  });
  load();
  follow(load);
}

async function start() {
  try {
    csrf = (await api("/ui/api/session")).csrf;
  } catch (error) {
    return;
  }
  const page = document.body.dataset.page;
  if (page === "board") boardPage();
  else if (page === "agents") agentsPage();
  else if (page === "task") taskPage();
}

document.addEventListener("DOMContentLoaded", start);
