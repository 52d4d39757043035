// The job list, refreshed every two seconds from the REST API.

const body = document.querySelector("#jobs tbody");
const empty = document.querySelector("#empty");

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function refresh() {
  const response = await fetch("/api/v1/jobs?limit=100");
  if (!response.ok) return;
  const { jobs } = await response.json();
  body.replaceChildren(...jobs.map((job) => {
    const tr = document.createElement("tr");
    tr.append(
      cell(job.name),
      cell(job.status, `status-${job.status}`),
      cell(`${job.step} / ${job.total_steps}`, "num"),
      cell(job.loss == null ? "" : job.loss.toFixed(4), "num"),
      cell(job.device ?? ""),
      cell(new Date(job.created_at).toLocaleString()),
    );
    return tr;
  }));
  empty.hidden = jobs.length > 0;
}

refresh();
setInterval(refresh, 2000);
