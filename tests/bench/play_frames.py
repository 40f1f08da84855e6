#!/usr/bin/env python3
# A full-screen video for an X display: shows the PNG frames of a directory (make_frames.sh) at 25 fps,
# forwards then backwards, without a window manager. ImageMagick's `animate` cannot hold 200 frames of
# 1280x720 under Debian's default resource policy; Tk keeps them decoded in the X server.
# Usage: play_frames.py DIR WIDTH HEIGHT
import glob
import sys
import tkinter as tk

directory, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
files = sorted(glob.glob(directory + "/f*.png"))[:100]
if not files:
    sys.exit(f"no frames in {directory}")
root = tk.Tk()
root.title("portico-video")
root.geometry(f"{width}x{height}+0+0")
root.overrideredirect(True)
images = [tk.PhotoImage(file=f) for f in files]
images += images[::-1]
label = tk.Label(root, bd=0)
label.pack()
step = 0


def next_frame():
    global step
    label.configure(image=images[step % len(images)])
    step += 1
    root.after(40, next_frame)


next_frame()
root.mainloop()
