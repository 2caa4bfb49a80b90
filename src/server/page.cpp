// The web page of `fastvar serve` ("/"): a prompt (or class), seed, guidance
// and FastVAR on/off; it submits a job, shows its progress per scale and the
// image. No external assets. ?prompt=...&auto=1 generates on load.
#include "server/server.h"

namespace fastvar::server {

const char* web_page() {
  return R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fastvar.cpp</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em} label{display:block;margin:.5em 0 .2em} input[type=text],input[type=number],input[type=password]{width:100%;padding:.4em;box-sizing:border-box}
.row{display:flex;gap:1em}.row>div{flex:1} button{margin-top:1em;padding:.5em 1.5em;font-size:1em}
#bar{height:8px;background:#eee;margin:1em 0}#fill{height:8px;width:0;background:#4a7}
#out img{image-rendering:pixelated;width:256px;height:256px;border:1px solid #ccc}
#status{font-family:monospace;white-space:pre-wrap} small{color:#666}
</style></head><body>
<h1>fastvar.cpp</h1><div id="model"><small>loading the model list...</small></div>
<label for="prompt" id="plabel">Prompt</label><input type="text" id="prompt" value="sneaker">
<div class="row"><div><label for="seed">Seed</label><input type="number" id="seed" value="1" min="0"></div>
<div><label for="cfg">Guidance (empty: the model's default)</label><input type="number" id="cfg" step="0.5" min="0"></div>
<div><label for="n">Images</label><input type="number" id="n" value="1" min="1" max="16"></div></div>
<label><input type="checkbox" id="fastvar" checked> FastVAR (cached token pruning)</label>
<label for="key">API key (if the server has one)</label><input type="password" id="key">
<button id="go">Generate</button>
<div id="bar"><div id="fill"></div></div><div id="status"></div><div id="out"></div>
<script>
const $=id=>document.getElementById(id);
function headers(){const h={'Content-Type':'application/json'};const k=$('key').value;if(k)h['Authorization']='Bearer '+k;return h;}
async function models(){try{const r=await fetch('/v1/models',{headers:headers()});const j=await r.json();
 if(j.data&&j.data.length){const m=j.data[0];$('model').innerHTML='<small>'+m.id+': '+m.description.replace(/</g,'&lt;')+'</small>';
 $('plabel').textContent=m.text_to_image?'Prompt':'Class (name or id)';}}catch(e){}}
async function go(){
 $('go').disabled=true;$('out').innerHTML='';$('fill').style.width='0';$('status').textContent='submitting...';
 const body={prompt:$('prompt').value,seed:parseInt($('seed').value||'0'),n:parseInt($('n').value||'1'),fastvar:$('fastvar').checked};
 if($('cfg').value!=='')body.guidance_scale=parseFloat($('cfg').value);
 const t0=performance.now();
 try{const r=await fetch('/v1/jobs',{method:'POST',headers:headers(),body:JSON.stringify(body)});const j=await r.json();
  if(!r.ok){$('status').textContent='error '+r.status+': '+(j.error?j.error.message:'');$('go').disabled=false;return;}
  for(;;){await new Promise(s=>setTimeout(s,150));
   const q=await(await fetch('/v1/jobs/'+j.id,{headers:headers()})).json();
   if(q.progress&&q.progress.num_scales){const f=Math.min(1,(q.progress.scale+1)/(q.progress.num_scales+1));$('fill').style.width=(100*f)+'%';
    $('status').textContent=q.status+': scale '+q.progress.scale+' of '+q.progress.num_scales;}
   else $('status').textContent=q.status;
   if(q.status==='done'){$('fill').style.width='100%';$('status').textContent='done in '+((performance.now()-t0)/1000).toFixed(2)+' s, seed '+q.seed;
    for(const d of q.data){const im=document.createElement('img');im.src='data:image/png;base64,'+d.b64_json;im.alt='generated image';$('out').appendChild(im);}
    document.title='fastvar.cpp: done';break;}
   if(q.status==='failed'||q.status==='cancelled'){$('status').textContent=q.status+': '+(q.error?q.error.message:'');break;}}
 }catch(e){$('status').textContent='error: '+e;}
 $('go').disabled=false;}
$('go').onclick=go;
const u=new URLSearchParams(location.search);if(u.get('prompt'))$('prompt').value=u.get('prompt');if(u.get('seed'))$('seed').value=u.get('seed');
models();if(u.get('auto')==='1')go();
</script></body></html>
)HTML";
}

}  // namespace fastvar::server
