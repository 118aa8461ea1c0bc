// Front end of utils_cv's CameraWidget (webcam.py), loaded by anywidget in JupyterLab and
// Notebook 7. While the model's `running` is true it shows the camera in a <video> that fills
// the widget's width, and sends JPEG frames to the kernel: the next one when the kernel replied
// {type: "done"} to the last and `interval_ms` have passed since it, so a slow classifier never
// queues frames up. Errors (no camera, permission refused) go to the model's `error` text.

const REPLY_TIMEOUT_MS = 5000; // a frame the kernel never answered (restarted, busy) is resent

function render({ model, el }) {
  el.classList.add("utils-cv-camera");
  const video = document.createElement("video");
  video.autoplay = true;
  video.muted = true;
  video.playsInline = true;
  video.style.width = "100%";
  video.style.height = "auto";
  video.style.display = "block";
  el.appendChild(video);
  const canvas = document.createElement("canvas");

  let stream = null;
  let timer = null;
  let sentAt = 0; // when the last frame was sent

  function report(error) {
    model.set("error", error);
    model.save_changes();
  }

  function schedule(delayMs) {
    clearTimeout(timer);
    timer = setTimeout(sendFrame, delayMs);
  }

  function sendFrame() {
    if (!stream) return;
    if (video.videoWidth === 0) {
      schedule(50); // the camera's first frame is not there yet
      return;
    }
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    sentAt = performance.now();
    canvas.toBlob(
      async (blob) => {
        if (!blob || !stream) return;
        const buffer = await blob.arrayBuffer();
        model.send({ type: "frame" }, undefined, [buffer]);
      },
      "image/jpeg",
      0.9,
    );
    schedule(REPLY_TIMEOUT_MS); // normally replaced when the kernel's reply comes
  }

  async function start() {
    if (stream) return;
    try {
      const constraints = {
        audio: false,
        video: { facingMode: "user", width: { ideal: model.get("frame_width") } },
      };
      stream = await navigator.mediaDevices.getUserMedia(constraints);
    } catch (e) {
      report(`${e.name || "Error"}: ${e.message || e}`);
      model.set("running", false);
      model.save_changes();
      return;
    }
    if (!model.get("running")) {
      stop(); // stopped while the browser was asking for permission
      return;
    }
    video.srcObject = stream;
    report("");
    sendFrame();
  }

  function stop() {
    clearTimeout(timer);
    timer = null;
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    video.srcObject = null;
  }

  function onRunning() {
    if (model.get("running")) start();
    else stop();
  }

  function onMessage(msg) {
    // The kernel handled the last frame: the next one, interval_ms after the last.
    if (msg && msg.type === "done" && stream) {
      schedule(Math.max(0, model.get("interval_ms") - (performance.now() - sentAt)));
    }
  }

  model.on("change:running", onRunning);
  model.on("msg:custom", onMessage);
  onRunning();
  return () => {
    model.off("change:running", onRunning);
    model.off("msg:custom", onMessage);
    stop();
  };
}

export default { render };
